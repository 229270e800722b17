"""``Function`` (what ``@app.function`` returns) and ``FunctionCall`` (what ``.spawn`` returns)."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import _stream, config, protocol
from ._aclient import arequest
from ._aio import aio_iterator, aio_method, in_thread
from ._client import Client
from ._progress import Bar
from ._serialization import deserialize, rebuild_exception, serialize_args
from ._stream import CallEvents, _after, print_log
from .defaults import DEFAULT_LONG_POLL_SECONDS
from .exception import BY_NAME, InvalidError, PayloadTooLargeError
from .runtime import output_enabled

if TYPE_CHECKING:
    from .app import App
    from .image import Image

P = ParamSpec("P")
R = TypeVar("R")

QUICK_WAIT_SECONDS = 0.1  # with output shown, .remote() waits this long inline, then streams logs live
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a .map request is cut at this many bytes of inline arguments


@dataclass(frozen=True)
class FunctionOptions:
    """The decorator options the server and workers act on (sent as JSON)."""

    cpu: float | None = None
    memory: int | None = None
    timeout: int = 300
    scaledown_window: int | None = None
    min_containers: int | None = None
    max_containers: int | None = None
    buffer_containers: int | None = None
    retries: dict[str, float] | None = None  # Retries.to_json()
    gpu: str | None = None  # "T4", "A100:2" or "any": placed only on a worker with that GPU
    block_network: bool | None = None  # True: the container has no network (Docker runtime)
    container_runtime: str | None = None  # "runc" or "runsc" (gVisor): placed on a worker that runs it
    concurrent_inputs: int | None = None  # @minimodal.concurrent(max_inputs=)
    batch_max_size: int | None = None  # @minimodal.batched(max_batch_size=, wait_ms=)
    batch_wait_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _encode_input(client: Client, payload: bytes, limits: tuple[int, int] | None = None) -> dict[str, str]:
    """Inline small payloads; upload large ones as blobs; refuse ones over the maximum before sending.

    ``limits`` is ``(max_payload_size, inline_payload_size)`` when the caller has read them already.
    """
    limit, inline = limits or (config.get("max_payload_size"), config.get("inline_payload_size"))
    if len(payload) > limit:
        raise PayloadTooLargeError(
            f"the arguments pickle to {len(payload):,} bytes, over the maximum of {limit:,} "
            "(MINIMODAL_MAX_PAYLOAD_SIZE); pass a Volume path or a smaller value"
        )
    if len(payload) > inline:
        blob = client.request("PUT", "/v1/blobs", data=payload, timeout=600)
        return {"blob": blob["blob_id"]}
    return {"args": protocol.b64(payload)}


async def _aencode_input(client: Client, payload: bytes) -> dict[str, str]:
    """:func:`_encode_input` with the asyncio client for the upload."""
    if config.get("inline_payload_size") < len(payload) <= config.get("max_payload_size"):
        blob = await arequest(client, "PUT", "/v1/blobs", data=payload, timeout=600)
        return {"blob": blob["blob_id"]}
    return _encode_input(client, payload)  # inline, or refused as too large: no I/O either way


def _data(client: Client, envelope: dict[str, Any]) -> bytes:
    if envelope.get(protocol.OUT_BLOB):
        return client.request("GET", f"/v1/blobs/{envelope[protocol.OUT_BLOB]}", raw=True, timeout=600).content
    if envelope.get(protocol.OUT_DATA):
        return protocol.unb64(envelope[protocol.OUT_DATA])
    return b""


async def _adata(client: Client, envelope: dict[str, Any]) -> bytes:
    if envelope.get(protocol.OUT_BLOB):
        data: bytes = await arequest(client, "GET", f"/v1/blobs/{envelope[protocol.OUT_BLOB]}", raw=True, timeout=600)
        return data
    return _data(client, envelope)


def _decode_output(client: Client, envelope: dict[str, Any], data: bytes | None = None) -> tuple[bool, Any]:
    """``(True, value)`` for a success, ``(False, exception)`` for a failure (``data``: the body, if read)."""
    if data is None:
        data = _data(client, envelope)
    if envelope[protocol.OUT_STATUS] == protocol.CallStatus.COMPLETED.value:
        return True, deserialize(data)
    error_type = envelope.get(protocol.OUT_ERROR_TYPE)
    if error_type:
        return False, BY_NAME.get(error_type, BY_NAME["RemoteError"])(envelope.get(protocol.OUT_MESSAGE) or "")
    return False, rebuild_exception(data, envelope.get(protocol.OUT_TRACEBACK), envelope.get(protocol.OUT_MESSAGE))


def _stream_items(client: Client, call_id: str, index: int = 0) -> Iterator[Any]:
    """Yield a generator call's items as they are produced; then raise its error, if it failed."""
    kinds = ("items", "outputs", "logs") if output_enabled() else ("items", "outputs")
    events = CallEvents(client, call_id, kinds)
    received, output = 0, None
    try:
        while True:
            for event in events.next():
                if event["kind"] == "log":
                    print_log(event)
                elif event.get(protocol.ITEM_INDEX) != index:
                    continue
                elif event["kind"] == "output":
                    output = event
                elif event["kind"] == "item" and not event.get(protocol.ITEM_DONE):
                    received += 1
                    yield deserialize(_data(client, event))
            # The output comes after the input's last item; its count says when all items are in.
            if output is not None and received >= int(output.get(protocol.OUT_ITEMS) or 0):
                ok, value = _decode_output(client, output)
                if not ok:
                    raise value
                return
    finally:
        events.close()


class FunctionCall(Generic[R]):
    """A handle on a call made with ``.spawn()``; ``get()`` waits for its result.

    Example::

        fc = square.spawn(5)
        fc.get()            # 25
        FunctionCall.from_id(fc.object_id).get()
        await fc.get.aio()
    """

    def __init__(self, call_id: str, client: Client | None = None) -> None:
        self.object_id = call_id
        self._client = client or Client.from_config()
        self._outputs: dict[int, dict[str, Any]] = {}
        self._cursor = "0-0"
        self._lock = threading.Lock()
        self._show_app_logs = True  # False when the caller read this call's own logs (.remote())

    def __repr__(self) -> str:
        return f"FunctionCall({self.object_id!r})"

    @classmethod
    def from_id(cls, function_call_id: str, client: Client | None = None) -> FunctionCall[Any]:
        return cls(function_call_id, client)

    def _poll(self, wait: float) -> list[dict[str, Any]]:
        """Long-poll the server for outputs after the cursor (at most ``wait`` seconds)."""
        reply = self._client.request(
            "GET",
            f"/v1/calls/{self.object_id}/outputs",
            params={"cursor": self._cursor, "timeout": f"{wait:.3f}"},
            timeout=wait + 30,
            reconnect=True,
        )
        return self._take_outputs(reply)

    async def _apoll(self, wait: float) -> list[dict[str, Any]]:
        reply = await arequest(
            self._client,
            "GET",
            f"/v1/calls/{self.object_id}/outputs",
            params={"cursor": self._cursor, "timeout": f"{wait:.3f}"},
            timeout=wait + 30,
            reconnect=True,
        )
        return self._take_outputs(reply)

    def _take_outputs(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        self._cursor = reply["cursor"]
        for envelope in reply["outputs"]:
            self._outputs[envelope[protocol.OUT_INDEX]] = envelope
        outputs: list[dict[str, Any]] = reply["outputs"]
        return outputs

    def _envelope(self, index: int, timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while index not in self._outputs:
                remaining = DEFAULT_LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
                if remaining <= 0 and deadline is not None and timeout != 0:
                    break
                self._poll(max(0.0, min(remaining, DEFAULT_LONG_POLL_SECONDS)))
                if deadline is not None and time.monotonic() >= deadline:
                    break
            if index not in self._outputs:
                raise TimeoutError(f"{self.object_id} has no result yet (waited {timeout} s)")
            return self._outputs[index]

    @aio_method
    def get(self, timeout: float | None = None, *, index: int = 0) -> R:
        """Wait for the result; raise the builtin ``TimeoutError`` if it is not ready within ``timeout``.

        A remote exception is re-raised with its original type and the remote traceback attached.
        """
        envelope = self._envelope(index, timeout)
        if self._show_app_logs:
            _stream.catch_up()  # under output, what the call printed shows before its result is used
        ok, value = _decode_output(self._client, envelope)
        if not ok:
            raise value
        return value

    @get.native
    async def _get_aio(self, timeout: float | None = None, *, index: int = 0) -> R:
        deadline = None if timeout is None else time.monotonic() + timeout
        while index not in self._outputs:
            remaining = DEFAULT_LONG_POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0 and deadline is not None and timeout != 0:
                break
            await self._apoll(max(0.0, min(remaining, DEFAULT_LONG_POLL_SECONDS)))
            if deadline is not None and time.monotonic() >= deadline:
                break
        if index not in self._outputs:
            raise TimeoutError(f"{self.object_id} has no result yet (waited {timeout} s)")
        envelope = self._outputs[index]
        if self._show_app_logs and _stream._following:
            await in_thread(_stream.catch_up)
        ok, value = _decode_output(self._client, envelope, await _adata(self._client, envelope))
        if not ok:
            raise value
        return value

    @aio_iterator
    def stream(self, *, index: int = 0) -> Iterator[Any]:
        """The items of a spawned generator call, as they are produced (resumes after a dropped connection)."""
        return _stream_items(self._client, self.object_id, index)

    @aio_method
    def cancel(self, terminate_containers: bool = False) -> None:
        """Cancel what has not ended of this call (and of the calls it made): ``get()`` then raises
        :class:`~minimodal.exception.InputCancelledError`. An input already running finishes, but its
        result is dropped (``terminate_containers`` is accepted for Modal compatibility)."""
        self._client.request("POST", f"/v1/calls/{self.object_id}/cancel", reconnect=True)

    @staticmethod
    def gather(*function_calls: FunctionCall[Any]) -> list[Any]:
        """Wait for all calls; results in argument order; the first failure is raised."""
        return [fc.get() for fc in function_calls]


class Function(Generic[P, R]):
    """A function registered on an App. Call it with ``.remote``, ``.spawn``, ``.map`` or ``.local``.

    Every method that waits has an async form: ``await f.remote.aio(x)``, ``async for r in f.map.aio(xs)``.
    """

    def __init__(
        self, app: App, raw_f: Callable[P, R], tag: str, options: FunctionOptions, image: Image | None = None
    ) -> None:
        self._app = app
        self._image = image
        self._raw_f = raw_f
        self._tag = tag
        self._options = options
        self._is_generator = inspect.isgeneratorfunction(raw_f) or inspect.isasyncgenfunction(raw_f)
        self.object_id: str | None = None
        self._web_url: str | None = None
        self._serialized = False  # serialized=True: pickled by value, never imported by name in the container
        self._extra_spec: dict[str, Any] = {}  # what sdk/cls.py, web.py and schedule.py add
        self.__doc__ = raw_f.__doc__
        self.__name__ = getattr(raw_f, "__name__", tag)

    def __repr__(self) -> str:
        return f"Function({self._tag!r}, object_id={self.object_id!r})"

    def _spec(self) -> dict[str, Any]:
        """What the server keeps beside the code: how to call this function by name, as a web endpoint, on time."""
        return {"generator": self._is_generator, **self._extra_spec}

    @classmethod
    def from_name(cls, app_name: str, name: str, *, environment_name: str | None = None) -> Function[..., Any]:
        """The function ``name`` of the deployed app ``app_name`` (its current version), from any program."""
        from ._deploy import lookup_function

        return lookup_function(app_name, name)

    def with_options(self, **options: Any) -> Function[P, R]:
        """The same function with other options, run in containers of its own (see ``sdk/_variants.py``).

        Takes ``cpu``, ``memory``, ``gpu``, ``timeout``, ``retries``, ``max_containers``, ``min_containers``,
        ``buffer_containers``, ``scaledown_window``, ``volumes`` and ``secrets`` (these two replace the
        function's own): ``f.with_options(timeout=5).spawn_map(xs)``.
        """
        from ._variants import with_options

        return with_options(self, options)

    def get_web_url(self) -> str | None:
        """The stable URL of a deployed web endpoint (None for other functions)."""
        return self._web_url

    def _hydrated_id(self) -> str:
        if self.object_id is None:
            raise InvalidError(
                f"function {self._tag!r} is not running on a server yet: call it inside `with app.run():`, "
                "or start the program with `minimodal run FILE`"
            )
        return self.object_id

    def _check_callable_remotely(self, how: str) -> None:
        if self._is_generator and how not in ("remote_gen", "spawn"):
            if how == "remote":
                raise InvalidError(f"{self._tag} is a generator function: use .remote_gen() instead of .remote()")
            raise InvalidError(f"{self._tag} is a generator function: .{how}() is not allowed on generators")
        if not self._is_generator and how == "remote_gen":
            raise InvalidError(f"{self._tag} is not a generator function: use .remote()")

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function here, in this process."""
        return self._raw_f(*args, **kwargs)

    @aio_method
    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call on a worker and return its result (or raise its exception).

        With output enabled (``minimodal run``, ``enable_output()``) what the call prints is shown here
        as it runs.
        """
        self._check_callable_remotely("remote")
        payloads = [serialize_args(args, kwargs)]
        if not output_enabled():
            return self._submit(payloads, wait=DEFAULT_LONG_POLL_SECONDS).get()
        fc = self._submit(payloads, wait=QUICK_WAIT_SECONDS, logs=True)
        if 0 not in fc._outputs:
            events = CallEvents(fc._client, fc.object_id, ("outputs", "logs"))
            try:
                while 0 not in fc._outputs:
                    for event in events.next():
                        if event["kind"] == "log":
                            print_log(event)
                        else:
                            fc._outputs[event[protocol.OUT_INDEX]] = event
            finally:
                events.close()
        fc._show_app_logs = False  # its lines were read from its own stream above
        return fc.get()

    @remote.native
    async def _remote_aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """``await f.remote.aio(x)``: the same call, with the asyncio client (holds no thread while it waits)."""
        self._check_callable_remotely("remote")
        payloads = [serialize_args(args, kwargs)]
        if not output_enabled():
            fc = await self._asubmit(payloads, wait=DEFAULT_LONG_POLL_SECONDS)
            return await fc._get_aio()
        fc = await self._asubmit(payloads, wait=QUICK_WAIT_SECONDS, logs=True)
        cursors = {"outputs": "0-0", "logs": "0-0"}
        while 0 not in fc._outputs:  # long-poll the call's outputs and logs (lines shown once: _stream._Shown)
            reply = await arequest(
                fc._client,
                "GET",
                f"/v1/calls/{fc.object_id}/stream",
                params={**cursors, "timeout": f"{DEFAULT_LONG_POLL_SECONDS}"},
                timeout=DEFAULT_LONG_POLL_SECONDS + 30,
                reconnect=True,
            )
            for event in reply["events"]:
                kind = {"log": "logs", "output": "outputs"}.get(event["kind"])
                if kind is None or not _after(event["cursor"], cursors[kind]):
                    continue
                cursors[kind] = event["cursor"]
                if kind == "logs":
                    print_log(event)
                else:
                    fc._outputs[event[protocol.OUT_INDEX]] = event
        fc._show_app_logs = False
        return await fc._get_aio()

    @aio_iterator
    def remote_gen(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
        """Run a generator function on a worker and yield its items as they are produced."""
        self._check_callable_remotely("remote_gen")
        fc = self._submit([serialize_args(args, kwargs)])
        return _stream_items(fc._client, fc.object_id)

    @aio_method
    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        """Start one call and return at once with a :class:`FunctionCall` handle."""
        self._check_callable_remotely("spawn")
        return self._submit([serialize_args(args, kwargs)])

    @spawn.native
    async def _spawn_aio(self, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        self._check_callable_remotely("spawn")
        return await self._asubmit([serialize_args(args, kwargs)])

    def _submit(self, payloads: list[bytes], wait: float = 0, logs: bool = False) -> FunctionCall[R]:
        client = Client.from_config()
        inputs = [_encode_input(client, payload) for payload in payloads]
        # The call id is chosen here, so a submit retried after a lost answer is accepted once.
        reply = client.request(
            "POST",
            f"/v1/functions/{self._hydrated_id()}/calls",
            json={"inputs": inputs, "more": False, "wait": wait, "logs": logs, "call_id": protocol.new_id("fc")},
            timeout=wait + 60,
            reconnect=True,
        )
        return self._call_of(client, reply)

    async def _asubmit(self, payloads: list[bytes], wait: float = 0, logs: bool = False) -> FunctionCall[R]:
        """:meth:`_submit` with the asyncio client."""
        client = Client.from_config()
        inputs = [await _aencode_input(client, payload) for payload in payloads]
        reply = await arequest(
            client,
            "POST",
            f"/v1/functions/{self._hydrated_id()}/calls",
            json={"inputs": inputs, "more": False, "wait": wait, "logs": logs, "call_id": protocol.new_id("fc")},
            timeout=wait + 60,
            reconnect=True,
        )
        return self._call_of(client, reply)

    @staticmethod
    def _call_of(client: Client, reply: dict[str, Any]) -> FunctionCall[R]:
        fc: FunctionCall[R] = FunctionCall(reply["call_id"], client)
        for event in reply.get("logs", []):
            print_log(event)
        for envelope in reply.get("outputs", []):
            fc._outputs[envelope[protocol.OUT_INDEX]] = envelope
        return fc

    @aio_iterator
    def map(
        self,
        *input_iterators: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool | None = None,
    ) -> Iterator[R]:
        """Run the function over the inputs in parallel; results in input order by default.

        Outputs stream back as inputs complete; with ``order_outputs=False`` they come in completion
        order. With ``return_exceptions=True`` a failed input yields its exception object instead of raising.
        """
        self._check_callable_remotely("map")
        arg_tuples = zip(*input_iterators, strict=False)
        return _MapRun(self, arg_tuples, kwargs or {}, order_outputs, return_exceptions).results()

    @aio_iterator
    def starmap(
        self,
        input_iterator: Iterable[tuple[Any, ...]],
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        wrap_returned_exceptions: bool | None = None,
    ) -> Iterator[R]:
        """Like :meth:`map`, each element unpacked into positional arguments."""
        self._check_callable_remotely("starmap")
        return _MapRun(self, iter(input_iterator), kwargs or {}, order_outputs, return_exceptions).results()

    @aio_method
    def for_each(
        self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        """Map and discard the results; block until every input is done."""
        for _ in self.map(*input_iterators, kwargs=kwargs, return_exceptions=ignore_exceptions):
            pass

    @aio_method
    def spawn_map(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] | None = None) -> None:
        """Start a map and return once its inputs are accepted; results cannot be retrieved."""
        self._check_callable_remotely("spawn_map")
        run = _MapRun(self, zip(*input_iterators, strict=False), kwargs or {}, True, True)
        run.submit_all()
        if run.error is not None:
            raise run.error


@dataclass
class _MapRun:
    """One ``.map``: a submitter thread sends inputs in batches while the caller reads pushed outputs."""

    function: Function[Any, Any]
    arg_tuples: Iterator[tuple[Any, ...]]
    kwargs: dict[str, Any]
    order_outputs: bool
    return_exceptions: bool
    client: Client = field(default_factory=Client.from_config)
    call_id: str | None = None
    submitted: int = 0
    total: int | None = None
    error: BaseException | None = None
    stopped: bool = False
    started: threading.Event = field(default_factory=threading.Event)

    def submit_all(self) -> None:
        """Send every input, ``map_request_size`` per request (fewer when they are large)."""
        batch_size = config.get("map_request_size")
        limits = (config.get("max_payload_size"), config.get("inline_payload_size"))  # read once, not per input
        try:
            batch: list[dict[str, str]] = []
            batch_bytes = 0
            for args in self.arg_tuples:
                if self.stopped:
                    return
                encoded = _encode_input(self.client, serialize_args(tuple(args), self.kwargs), limits)
                batch.append(encoded)
                batch_bytes += len(encoded.get("args", ""))
                if len(batch) >= batch_size or batch_bytes >= MAX_REQUEST_BYTES:
                    self._send(batch, more=True)
                    batch, batch_bytes = [], 0
            self._send(batch, more=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which re-raises it
            self.error = exc
        finally:
            if self.total is None:
                self.total = self.submitted
            self.started.set()

    def _send(self, batch: list[dict[str, str]], *, more: bool) -> None:
        body: dict[str, Any] = {"inputs": batch, "more": more}
        if self.call_id is None and not batch:
            self.total = 0  # an empty map: nothing to send
            return
        if self.call_id is None:
            body["call_id"] = protocol.new_id("fc")  # repeatable: see Function._submit
            path = f"/v1/functions/{self.function._hydrated_id()}/calls"
            reply = self.client.request("POST", path, json=body, reconnect=True)
            self.call_id = reply["call_id"]
            self.started.set()
        elif batch or not more:
            body["first"] = self.submitted  # repeatable: inputs already in are not added twice
            self.client.request("POST", f"/v1/calls/{self.call_id}/inputs", json=body, reconnect=True)
        self.submitted += len(batch)
        if not more:
            self.total = self.submitted

    def results(self) -> Iterator[Any]:
        submitter = threading.Thread(target=self.submit_all, name="minimodal-map-submit", daemon=True)
        submitter.start()
        try:
            yield from self._read()
        finally:
            self.stopped = True

    def _read(self) -> Iterator[Any]:
        self.started.wait()
        if self.error is not None and self.call_id is None:
            raise self.error
        if self.call_id is None:
            return  # no inputs at all
        kinds = ("outputs", "logs") if output_enabled() else ("outputs",)
        events = CallEvents(self.client, self.call_id, kinds)
        bar = Bar(f"{self.function._tag}.map", self.total)
        pending: dict[int, Any] = {}
        seen: set[int] = set()  # at-least-once execution may deliver an index twice; the first wins
        next_index = 0
        try:
            while self.total is None or len(seen) < self.total:
                if self.error is not None:
                    raise self.error
                for event in events.next(1.0 if self.total is None else DEFAULT_LONG_POLL_SECONDS):
                    if event["kind"] == "log":
                        print_log(event)
                        continue
                    index = event[protocol.OUT_INDEX]
                    if index in seen:
                        continue
                    seen.add(index)
                    bar.advance(total=self.total)
                    ok, value = _decode_output(self.client, event)
                    if not ok and not self.return_exceptions:
                        raise value
                    if not self.order_outputs:
                        yield value
                        continue
                    pending[index] = value
                    while next_index in pending:
                        yield pending.pop(next_index)
                        next_index += 1
        finally:
            bar.close()
            events.close()
