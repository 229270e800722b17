"""The hello-world of MiniModal: run with `minimodal run examples/hello.py` (or `make demo`)."""

import minimodal

app = minimodal.App("demo")


@app.function(cpu=1, memory=256, timeout=60)
def square(x):
    return x * x


@app.function()
def sum_of_squares(n):
    return sum(square.map(range(n)))  # a function calling a function, on a worker


@app.local_entrypoint()
def main():
    print("local  ", square.local(3))  # 9, runs here
    print("remote ", square.remote(4))  # 16, runs on a worker
    fc = square.spawn(5)
    print("spawn  ", fc.get())  # 25
    print("map    ", list(square.map(range(10))))  # ordered results
    print("starmap", list(square.starmap([(1,), (2,)])))
    print("gather ", minimodal.FunctionCall.gather(square.spawn(6), square.spawn(7)))
    print("nested ", sum_of_squares.remote(4))  # 0 + 1 + 4 + 9 = 14


if __name__ == "__main__":
    # `python examples/hello.py` works too
    with app.run():
        main()
