"""The process that runs user code: ``python -m minimodal._runner``.

It imports only the standard library and cloudpickle, so it runs unchanged in a bare container. It
speaks a framed protocol on its stdin and stdout, which it takes for itself before any user code runs;
what user code prints goes back to the worker as log frames, tagged with the input it belongs to.

A frame is ``kind (1 byte) | header length (4) | body length (4) | JSON header | body``; ``_frames.py`` reads
and writes them, and its ``Kind`` names each kind once (``F`` is ``Kind.FUNCTION``, ...).

Worker to runner: ``F`` the cloudpickled function (once), ``C`` one input (header ``call_id``, ``idx``;
body the pickled ``(args, kwargs)``). Runner to worker: ``R`` ready, ``E`` the function failed to load,
``Y`` one item of a generator (header ``n``, its index; body the pickled item), ``O`` the output of
one input (header ``ok``, ``items`` for generators, ``traceback``, ``type``, ``repr``; body the
pickled return value, or the pickled exception, empty when it could not be pickled), ``L`` a chunk of
printed text (header ``stream``) from ``print``. A ``C`` header may hold ``env``: variables (the
function's secrets) set in ``os.environ`` while that input runs, so they never appear in the process's
or container's configuration. While an input runs, its code may ask the platform something (a Dict
or Queue operation): the runner sends ``Q`` (header: the JSON request) and the worker answers ``A``
(header: the JSON answer, or ``{"error": {"type", "message"}}``); the SDK reaches this channel through
the module ``_minimodal_channel`` the runner registers in ``sys.modules``. What is written straight
to file descriptors 1 and 2 goes to the process's stderr, which the runtime reads: it survives a
crash that a frame would not.
Coroutine functions and async generators run on one event loop that lives as long as the runner.

A runner loaded with ``F`` header ``max_inputs`` > 1 (``@concurrent``, ``@batched``) takes that many
inputs at once: every frame of an input (``C``, ``L``, ``Y``, ``O``, ``Q``, ``A``) then carries the
``tag`` the worker gave it in ``C`` (see ``_Concurrent``); text written straight to fds 1 and 2 cannot
be told apart by input there.

The worker never unpickles what a runner sends: headers are JSON and bodies go to the client as
opaque bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import io
import os
import queue
import socket
import sys
import threading
import time
import traceback
import types
from typing import IO, Any

if __package__:  # python -m minimodal._runner (the process runtime)
    from ._frames import Kind, read_frame, write_frame
else:  # a script beside its frames module (the Docker runtime mounts both in /opt/mm/runner)
    from minimodal_frames import Kind, read_frame, write_frame  # type: ignore[import-not-found,no-redef]


class _LogStream(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr: each write becomes an ``L`` frame for the worker."""

    def __init__(self, name: str, out: IO[bytes], lock: threading.Lock) -> None:
        self._name, self._out, self._lock = name, out, lock

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            header: dict[str, Any] = {"stream": self._name}
            tag = _TAG.get()
            if tag is not None:  # a runner taking several inputs at once: whose text this is
                header["tag"] = tag
            with self._lock:
                write_frame(self._out, Kind.LOG, header, text.encode("utf-8", "replace"))
        return len(text)


_TAG: contextvars.ContextVar[int | None] = contextvars.ContextVar("mm_input_tag", default=None)
CHANNEL_MODULE = "_minimodal_channel"  # sys.modules name the SDK looks for (minimodal._objects)


class _Channel:
    """Requests of the running input to the worker: each ``Q`` carries an ``rid``, its ``A`` echoes it.

    Several threads of one input may wait at once (a ``.map`` sends inputs while it reads results):
    whichever finds no reader reads frames for all of them and hands each answer to its owner.
    """

    def __init__(self, inp: IO[bytes], out: IO[bytes], lock: threading.Lock) -> None:
        self._inp, self._out, self._lock = inp, out, lock
        self._reading = threading.Lock()
        self._boxes: dict[int, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self._ids = iter(range(1, 1 << 62))
        self._gone = False

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        box: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            rid = next(self._ids)
            self._boxes[rid] = box
            write_frame(self._out, Kind.REQUEST, {**header, "rid": rid})
        try:
            while True:
                try:
                    answer = box.get(timeout=0.02)
                    break
                except queue.Empty:
                    pass
                if self._gone:
                    answer = None
                    break
                if self._reading.acquire(blocking=False):
                    try:
                        self._read_until(box)
                    finally:
                        self._reading.release()
        finally:
            self._boxes.pop(rid, None)
        if answer is None:
            raise ConnectionError("the worker did not answer a platform request")
        answer.pop("rid", None)
        return answer

    def _read_until(self, mine: queue.SimpleQueue[dict[str, Any] | None]) -> None:
        while mine.empty():
            frame = read_frame(self._inp)
            if frame is None:
                self._gone = True
                for box in list(self._boxes.values()):
                    box.put(None)
                return
            if frame[0] == Kind.ANSWER:
                waiting = self._boxes.get(frame[1].get("rid", -1))
                if waiting is not None:
                    waiting.put(frame[1])


def _install_channel(channel: _Channel) -> None:
    module = types.ModuleType(CHANNEL_MODULE, "The runner's request channel to its worker.")
    module.request = channel.request  # type: ignore[attr-defined]
    sys.modules[CHANNEL_MODULE] = module


def _set_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set ``env`` in os.environ; return what to restore after the input."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "repr": repr(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc)),
    }


class _Call:
    """Runs one input: plain, coroutine, generator or async generator, on the runner's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Any) -> None:
        self.loop = loop
        self.emit = emit  # emit(n, item) sends one generator item

    def run(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, int | None]:
        """The return value and, for generators, how many items were yielded."""
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            return self.loop.run_until_complete(result), None
        if inspect.isgenerator(result):
            count = 0
            for item in result:
                self.emit(count, item)
                count += 1
            return None, count
        if inspect.isasyncgen(result):
            count = 0
            while True:
                try:
                    item = self.loop.run_until_complete(result.__anext__())
                except StopAsyncIteration:
                    return None, count
                self.emit(count, item)
                count += 1
        return result, None


class _Concurrent:
    """Serves a runner that takes several inputs at once: ``@concurrent`` and ``@batched`` functions.

    Every frame of an input carries the ``tag`` the worker gave it. Sync inputs run in threads (at most
    ``max_inputs``), coroutines as tasks of one event loop in its own thread. A ``Q`` goes out with the
    input's tag and the reading loop hands the ``A`` with that tag back to it. With ``batch``, inputs
    wait up to ``wait_ms`` for others (at most ``max_batch_size``); inputs with the same reserved
    ``__mm_*`` keyword arguments (a class's method and parameters) then make one call with one list per
    parameter, and each gets its element of the returned list. Secrets are set in ``os.environ`` for the
    runner's life (all its inputs are of one function, with the same secrets).
    """

    def __init__(self, fn: Any, inp: IO[bytes], out: IO[bytes], lock: threading.Lock, width: int, batch: Any) -> None:
        import cloudpickle

        self.pickle = cloudpickle
        self.fn, self.inp, self.out, self.lock = fn, inp, out, lock
        self.threads = concurrent.futures.ThreadPoolExecutor(int(width), thread_name_prefix="mm-input")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mm-loop", daemon=True).start()
        self.answers: dict[tuple[Any, int], queue.SimpleQueue[dict[str, Any] | None]] = {}
        self.rids = 0
        self.batch = batch
        self.pending: queue.SimpleQueue[tuple[dict[str, Any], bytes]] = queue.SimpleQueue()
        if batch:
            threading.Thread(target=self._batch_loop, name="mm-batcher", daemon=True).start()

    def send(self, kind: Kind, header: dict[str, Any], body: bytes = b"") -> None:
        with self.lock:
            write_frame(self.out, kind, header, body)

    def request(self, header: dict[str, Any]) -> dict[str, Any]:
        """The running input's request to the platform (the ``_minimodal_channel`` of this runner)."""
        tag = _TAG.get()
        box: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self.lock:
            rid = self.rids = self.rids + 1
            self.answers[(tag, rid)] = box
            write_frame(self.out, Kind.REQUEST, {**header, "tag": tag, "rid": rid})
        try:
            answer = box.get()
        finally:
            self.answers.pop((tag, rid), None)
        if answer is None:
            raise ConnectionError("the worker did not answer a platform request")
        answer.pop("tag", None)
        answer.pop("rid", None)
        return answer

    def serve(self) -> None:
        _install_channel(self)  # type: ignore[arg-type]
        while True:
            frame = read_frame(self.inp)
            if frame is None:
                break
            kind, header, body = frame
            if kind == Kind.ANSWER:
                box = self.answers.get((header.get("tag"), header.get("rid", -1)))
                if box is not None:
                    box.put(header)
            elif kind == Kind.CALL:
                if self.batch:
                    self.pending.put((header, body))
                else:
                    self.threads.submit(self._one, header, body)
        for box in list(self.answers.values()):
            box.put(None)

    def _prepare(self, header: dict[str, Any]) -> None:
        os.environ["MINIMODAL_FUNCTION_CALL_ID"] = header.get("call_id", "")
        os.environ["MINIMODAL_INPUT_INDEX"] = str(header.get("idx", ""))
        os.environ.update(header.get("env") or {})

    def _fail(self, tag: Any, exc: BaseException) -> None:
        try:
            body = self.pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an unpicklable exception becomes a RemoteError client-side
            body = b""
        self.send(Kind.OUTPUT, {**_describe(exc), "tag": tag}, body)

    def _await(self, tag: Any, awaitable: Any) -> Any:
        async def tagged() -> Any:
            _TAG.set(tag)
            return await awaitable

        return asyncio.run_coroutine_threadsafe(tagged(), self.loop).result()

    def _one(self, header: dict[str, Any], body: bytes) -> None:
        tag = header.get("tag")
        _TAG.set(tag)
        try:
            self._prepare(header)
            args, kwargs = self.pickle.loads(body)
            result = self.fn(*args, **kwargs)
            items = None
            if inspect.iscoroutine(result):
                result = self._await(tag, result)
            elif inspect.isgenerator(result) or inspect.isasyncgen(result):
                items = self._items(tag, result)
                result = None
            data = self.pickle.dumps(result)
        except BaseException as exc:  # noqa: BLE001 - the user's exception travels to the caller
            self._fail(tag, exc)
            return
        sys.stdout.flush()
        self.send(Kind.OUTPUT, {"ok": True, "tag": tag, **({"items": items} if items is not None else {})}, data)

    def _items(self, tag: Any, gen: Any) -> int:
        count = 0
        while True:
            try:
                item = self._await(tag, gen.__anext__()) if inspect.isasyncgen(gen) else next(gen)
            except (StopIteration, StopAsyncIteration):
                return count
            self.send(Kind.ITEM, {"n": count, "tag": tag}, self.pickle.dumps(item))
            count += 1

    def _batch_loop(self) -> None:
        size, wait = int(self.batch["max_batch_size"]), float(self.batch["wait_ms"]) / 1000
        while True:
            group = [self.pending.get()]
            deadline = time.monotonic() + wait  # the batch goes when full, or wait_ms after its first input
            while len(group) < size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    group.append(self.pending.get(timeout=left))
                except queue.Empty:
                    break
            self.threads.submit(self._run_batch, group)

    def _run_batch(self, group: list[tuple[dict[str, Any], bytes]]) -> None:
        parts: list[tuple[dict[str, Any], list[tuple[Any, tuple[Any, ...], dict[str, Any]]]]] = []
        for header, body in group:
            tag = header.get("tag")
            try:
                self._prepare(header)
                args, kwargs = self.pickle.loads(body)
            except BaseException as exc:  # noqa: BLE001
                self._fail(tag, exc)
                continue
            fixed = {k: v for k, v in kwargs.items() if k.startswith("__mm_")}
            for key, members in parts:
                if key == fixed:
                    members.append((tag, args, kwargs))
                    break
            else:
                parts.append((fixed, [(tag, args, kwargs)]))
        for fixed, members in parts:
            self._call_batch(fixed, members)

    def _call_batch(self, fixed: dict[str, Any], members: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]) -> None:
        tags = [tag for tag, _, _ in members]
        _TAG.set(tags[0])  # what the batch prints goes to the logs of its first input
        try:
            shapes = {(len(args), tuple(sorted(set(kwargs) - set(fixed)))) for _, args, kwargs in members}
            if len(shapes) != 1:
                raise TypeError(
                    "the inputs of one batch pass different arguments: every call of a batched function "
                    "must pass the same number of positional arguments and the same keyword names"
                )
            count, names = shapes.pop()
            columns = tuple([args[i] for _, args, _ in members] for i in range(count))
            named = {name: [kwargs[name] for _, _, kwargs in members] for name in names}
            result = self.fn(*columns, **named, **fixed)
            if inspect.iscoroutine(result):
                result = self._await(tags[0], result)
            if not isinstance(result, list) or len(result) != len(members):
                what = f"a list of {len(result)}" if isinstance(result, list) else f"a {type(result).__name__}"
                raise _batch_error(
                    f"the batched function {getattr(self.fn, '__qualname__', self.fn)!s} returned {what} for a "
                    f"batch of {len(members)} inputs: it must return a list with one result per input"
                )
        except BaseException as exc:  # noqa: BLE001 - every input of the batch gets the error
            for tag in tags:
                self._fail(tag, exc)
            return
        sys.stdout.flush()
        for tag, value in zip(tags, result, strict=True):
            try:
                data = self.pickle.dumps(value)
            except BaseException as exc:  # noqa: BLE001
                self._fail(tag, exc)
                continue
            self.send(Kind.OUTPUT, {"ok": True, "tag": tag}, data)


def _batch_error(message: str) -> Exception:
    """minimodal's InvalidError where the SDK is importable (it is, through MINIMODAL_SDK_PATH), else ValueError."""
    try:
        from minimodal.exception import InvalidError
    except ImportError:
        return ValueError(message)
    return InvalidError(message)


def _unpack_source(bundle: bytes) -> None:
    """Extract the app's shipped source (a zip) into a private folder at the head of ``sys.path``."""
    import tempfile
    import zipfile

    folder = tempfile.mkdtemp(prefix="mm-src-")
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        archive.extractall(folder)
    sys.path.insert(0, folder)


def _load(header: dict[str, Any], body: bytes, cloudpickle: Any) -> Any:
    """The function to run: imported by name from the app's module (``import`` in the header), or unpickled."""
    if header.get("import"):
        from minimodal._container import load_function  # the SDK is on sys.path (MINIMODAL_SDK_PATH)

        return load_function(header, body)
    return cloudpickle.loads(body)


def _alias_modal() -> None:
    """``import modal`` in user code gives MiniModal (``_modal_alias.py``, read by path: ``minimodal`` itself
    is imported only when user code imports ``modal``)."""
    import importlib.util

    found = importlib.util.find_spec("minimodal")
    folders = list(found.submodule_search_locations or ()) if found else []
    path = os.path.join(folders[0], "_modal_alias.py") if folders else ""
    spec = importlib.util.spec_from_file_location("_minimodal_modal_alias", path) if os.path.isfile(path) else None
    if spec is not None and spec.loader is not None:
        alias = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(alias)
        alias.install()


def main() -> None:
    import cloudpickle

    # Take stdin/stdout for the protocol; user code must not be able to write into it.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # text written straight to fd 1 (C extensions) joins stderr, which the runtime reads
    lock = threading.Lock()
    sys.stdout = _LogStream("stdout", proto_out, lock)
    sys.stderr = _LogStream("stderr", proto_out, lock)
    os.environ["MINIMODAL_IS_REMOTE"] = "1"
    sdk_path = os.environ.get("MINIMODAL_SDK_PATH")
    if sdk_path and sdk_path not in sys.path:
        sys.path.append(sdk_path)  # last: a minimodal installed in the image wins
    _alias_modal()

    os.environ.setdefault("MINIMODAL_TASK_ID", f"ta-{socket.gethostname()}-{os.getpid()}")
    frame = read_frame(proto_in)
    if frame is not None and frame[0] == Kind.SOURCE:
        _unpack_source(frame[2])
        frame = read_frame(proto_in)
    if frame is None or frame[0] != Kind.FUNCTION:
        return
    try:
        fn = _load(frame[1], frame[2], cloudpickle)
    except BaseException as exc:  # noqa: BLE001 - report anything, the worker decides
        with lock:
            write_frame(proto_out, Kind.LOAD_ERROR, _describe(exc))
        return
    with lock:
        python = f"{sys.version_info[0]}.{sys.version_info[1]}"
        write_frame(proto_out, Kind.READY, {"pid": os.getpid(), "python": python})

    def emit(n: int, item: Any) -> None:
        data = cloudpickle.dumps(item)
        with lock:
            write_frame(proto_out, Kind.ITEM, {"n": n}, data)

    if int(frame[1].get("max_inputs") or 1) > 1 or frame[1].get("batch"):
        from_header = frame[1]
        return _Concurrent(fn, proto_in, proto_out, lock, from_header["max_inputs"], from_header.get("batch")).serve()
    call = _Call(asyncio.new_event_loop(), emit)
    _install_channel(_Channel(proto_in, proto_out, lock))
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return
        kind, header, body = frame
        if kind != Kind.CALL:
            continue
        os.environ["MINIMODAL_FUNCTION_CALL_ID"] = header.get("call_id", "")
        os.environ["MINIMODAL_INPUT_INDEX"] = str(header.get("idx", ""))
        saved = _set_env(header.get("env") or {})
        try:
            args, kwargs = cloudpickle.loads(body)
            result, items = call.run(fn, args, kwargs)
            out_header: dict[str, Any] = {"ok": True}
            if items is not None:
                out_header["items"] = items
            out_body = cloudpickle.dumps(result)
        except BaseException as exc:  # noqa: BLE001 - the user's exception travels to the caller
            out_header = _describe(exc)
            try:
                out_body = cloudpickle.dumps(exc)
            except Exception:  # noqa: BLE001 - an unpicklable exception becomes a RemoteError client-side
                out_body = b""
        finally:
            _restore_env(saved)
        sys.stdout.flush()
        sys.stderr.flush()
        with lock:
            write_frame(proto_out, Kind.OUTPUT, out_header, out_body)


if __name__ == "__main__":
    main()
