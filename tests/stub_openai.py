"""A stdlib-only, OpenAI-compatible Chat Completions stub server for tests.

Tests must never call a real model provider. This module serves a scripted "model" on
127.0.0.1 that speaks enough of the OpenAI Chat Completions API for pydantic-ai's
``openai-chat:`` models (and the ``openai`` SDK) to drive a full agent turn, tool calls included.

Two ways to run it:

* In-process (pytest)::

      with StubOpenAIServer() as server:          # policy=cfo_script by default
          monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)   # http://127.0.0.1:<port>/v1
          ...
          server.requests                          # every JSON request body received

* As a subprocess (e.g. next to ``streamlit run`` in the browser test)::

      python tests/stub_openai.py --port 0 --script cfo

  The first stdout line is the bound port; the process serves until SIGTERM/SIGINT and
  then exits with status 0.

Endpoints: ``POST /v1/chat/completions`` (``"stream": false`` and ``"stream": true``),
``GET /v1/models``; anything else is a 404. A request whose ``Authorization: Bearer`` token
is in ``bad_keys`` (default ``{"bad-key"}``) gets an OpenAI-style HTTP 401.

A slow model: ``StubOpenAIServer(delay_s=2.0)`` (or ``--delay 2``) makes every chat completion
wait that long before it answers; ``delay_s`` may also be ``delay_s(request_json) -> seconds``
(e.g. hold only the request after a ``run_sql`` result) and may be changed while the server runs.
``server.release()`` ends the waits in progress at once (a test finishes a slow turn on cue). A
client that hangs up while its request waits (a cancelled agent run) gets no answer; its request
is appended to ``server.disconnected``.

Note: pydantic-ai's ``openai:`` model strings use the Responses API (``/v1/responses``), which
this stub does not implement (404); use ``openai-chat:<model>``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

__all__ = [
    "DEFAULT_ANSWER",
    "DEFAULT_SQL",
    "Reply",
    "SCRIPTS",
    "StubOpenAIServer",
    "ToolCall",
    "cfo_script",
    "main",
    "text_script",
]

DEFAULT_SQL = "SELECT 42 AS answer"
DEFAULT_ANSWER: dict[str, Any] = {"answer_markdown": "The answer is **42**."}
DEFAULT_PURPOSE = "Revenue by month"
NOTHING_TO_DO = "stub: nothing to do"
AUTH_ERROR_BODY: dict[str, Any] = {
    "error": {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


# --------------------------------------------------------------------------- replies


@dataclass
class ToolCall:
    """One tool call the stub model makes: a function ``name`` and its ``arguments`` dict."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass
class Reply:
    """What the stub model answers: either plain ``text`` or a list of ``tool_calls`` (not both).

    Use ``Reply(text="...")`` or ``Reply(tool_calls=[ToolCall("name", {...})])``. A policy may also
    return a bare ``str`` (text) or a list of ``ToolCall`` / ``(name, arguments)`` tuples; the server
    normalises those with :meth:`Reply.coerce`.
    """

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    @classmethod
    def coerce(cls, value: Any) -> "Reply":
        """Turn a policy's return value (``Reply``, ``str``, ``ToolCall`` or a list of calls) into a ``Reply``."""
        if isinstance(value, Reply):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, ToolCall):
            return cls(tool_calls=[value])
        if isinstance(value, (list, tuple)):
            calls = [c if isinstance(c, ToolCall) else ToolCall(c[0], dict(c[1])) for c in value]
            return cls(tool_calls=calls)
        raise TypeError(f"policy returned {type(value).__name__}; expected Reply, str or list of tool calls")


Policy = Callable[[dict[str, Any]], Any]
Delay = float | Callable[[dict[str, Any]], float]
"""Seconds a chat completion waits before it answers, or a function of the request returning them."""


# --------------------------------------------------------------------------- policies


def _content_text(content: Any) -> str:
    """Flatten a chat message ``content`` (str, list of parts or None) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
        )
    return str(content)


def _tool_name_for_call_id(messages: list[dict[str, Any]], call_id: str | None) -> str | None:
    """Find the function name of the assistant tool call with id ``call_id`` (searching backwards)."""
    for msg in reversed(messages):
        if msg.get("role") != "assistant":
            continue
        for call in msg.get("tool_calls") or []:
            if call.get("id") == call_id:
                return (call.get("function") or {}).get("name")
    return None


def _calls_since_last_user(messages: list[dict[str, Any]], tool_name: str) -> int:
    """Count assistant calls of ``tool_name`` after the last ``role: user`` message."""
    count = 0
    for msg in reversed(messages):
        role = msg.get("role")
        if role == "user":
            break
        if role == "assistant":
            count += sum(
                1 for c in msg.get("tool_calls") or [] if (c.get("function") or {}).get("name") == tool_name
            )
    return count


def _output_tool_name(request: dict[str, Any], prefer: str) -> str | None:
    """Pick pydantic-ai's output tool from the request's ``tools``.

    Returns the ``final_result*`` function whose name contains ``prefer`` if there is one, else the first
    ``final_result*`` function, else ``None`` (the agent has a text output).
    """
    names = [
        (t.get("function") or {}).get("name", "")
        for t in request.get("tools") or []
        if t.get("type", "function") == "function"
    ]
    finals = [n for n in names if n.startswith("final_result")]
    for name in finals:
        if prefer and prefer in name:
            return name
    return finals[0] if finals else None


def cfo_script(request: dict[str, Any]) -> Reply:
    """Scripted, stateless policy that drives one CFO Desk agent turn from the request's message list.

    Decided from the last message:

    1. ``role: user`` -> call ``list_tables`` with ``{}``.
    2. tool result of ``list_tables`` -> call ``run_sql`` with
       ``{"purpose": "Revenue by month", "sql": $STUB_SQL or "SELECT 42 AS answer"}``.
    3. tool result of ``run_sql``:
       * if its content mentions "error" or "retry" (pydantic-ai sends a tool's ``ModelRetry`` as
         ``{"error": "..."}`` in a tool message) and this turn has made only one ``run_sql`` call,
         re-issue ``run_sql`` once with ``$STUB_FIX_SQL`` (or the same SQL);
       * otherwise call the output tool: the ``final_result*`` tool containing ``$STUB_OUTPUT_TOOL``
         (default ``"FinalAnswer"``), else the first ``final_result*`` tool, with arguments from
         ``$STUB_ANSWER_JSON`` (a JSON object) or ``{"answer_markdown": "The answer is **42**."}``.
         If the request has no output tool (text output) the answer's ``answer_markdown`` is
         returned as text.
    4. anything else -> the text ``"stub: nothing to do"``.

    Environment variables are read on every request, so tests may change them between runs.
    """
    messages: list[dict[str, Any]] = request.get("messages") or []
    if not messages:
        return Reply(text=NOTHING_TO_DO)
    last = messages[-1]
    role = last.get("role")
    sql = os.environ.get("STUB_SQL") or DEFAULT_SQL

    if role == "user":
        return Reply(tool_calls=[ToolCall("list_tables", {})])

    if role == "tool":
        tool_name = _tool_name_for_call_id(messages, last.get("tool_call_id"))
        if tool_name == "list_tables":
            return Reply(tool_calls=[ToolCall("run_sql", {"purpose": DEFAULT_PURPOSE, "sql": sql})])
        if tool_name == "run_sql":
            content = _content_text(last.get("content")).lower()
            failed = "error" in content or "retry" in content
            if failed and _calls_since_last_user(messages, "run_sql") < 2:
                fix_sql = os.environ.get("STUB_FIX_SQL") or sql
                return Reply(tool_calls=[ToolCall("run_sql", {"purpose": DEFAULT_PURPOSE, "sql": fix_sql})])
            raw = os.environ.get("STUB_ANSWER_JSON")
            answer = json.loads(raw) if raw else dict(DEFAULT_ANSWER)
            if not isinstance(answer, dict):
                raise ValueError("STUB_ANSWER_JSON must be a JSON object")
            output_tool = _output_tool_name(request, os.environ.get("STUB_OUTPUT_TOOL", "FinalAnswer"))
            if output_tool is None:
                return Reply(text=str(answer.get("answer_markdown", json.dumps(answer))))
            return Reply(tool_calls=[ToolCall(output_tool, answer)])

    return Reply(text=NOTHING_TO_DO)


def text_script(request: dict[str, Any]) -> Reply:
    """Trivial policy: always answer with the text ``"stub: nothing to do"`` (or ``$STUB_TEXT``)."""
    return Reply(text=os.environ.get("STUB_TEXT") or NOTHING_TO_DO)


SCRIPTS: dict[str, Policy] = {"cfo": cfo_script, "cfo_script": cfo_script, "text": text_script}
"""Policies selectable by name from the command line (``--script NAME``)."""


# --------------------------------------------------------------------------- wire format


def _usage(request: dict[str, Any], reply: Reply) -> dict[str, int]:
    """A deterministic, roughly size-proportional token usage object."""
    prompt = max(1, len(json.dumps(request.get("messages") or [])) // 4)
    completion = max(1, len(reply.text or json.dumps([c.arguments for c in reply.tool_calls])) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(request: dict[str, Any], reply: Reply, model: str) -> dict[str, Any]:
    """Build a non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _usage(request, reply),
    }


def _chunks(request: dict[str, Any], reply: Reply, model: str) -> Iterable[dict[str, Any]]:
    """Yield the ``chat.completion.chunk`` objects of a streamed reply."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    if reply.tool_calls:
        for i, c in enumerate(reply.tool_calls):
            delta: dict[str, Any] = {
                "tool_calls": [
                    {
                        "index": i,
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                ]
            }
            if i == 0:
                delta = {"role": "assistant", "content": None, **delta}
            yield chunk(delta)
        yield chunk({}, "tool_calls")
    else:
        text = reply.text or ""
        yield chunk({"role": "assistant", "content": ""})
        # A few pieces, so consumers see real deltas.
        step = max(1, len(text) // 3)
        for start in range(0, len(text), step):
            yield chunk({"content": text[start : start + step]})
        yield chunk({}, "stop")
    if (request.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(request, reply)}


# --------------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Request handler; the owning :class:`StubOpenAIServer` is ``self.server.stub``."""

    server_version = "StubOpenAI/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection; SSE bodies end when the socket closes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence per-request logging (pytest output stays clean)."""
        if getattr(self.server, "stub").verbose:
            super().log_message(format, *args)

    # -- helpers
    @property
    def stub(self) -> "StubOpenAIServer":
        return getattr(self.server, "stub")

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send_json(
            404,
            {"error": {"message": f"Unknown path {self.path}", "type": "invalid_request_error", "code": "not_found"}},
        )

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else auth.strip()
        if token in self.stub.bad_keys:
            self._send_json(401, AUTH_ERROR_BODY)
            return False
        return True

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    # -- verbs
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """``GET /v1/models`` (and ``/v1/models/<id>``)."""
        path = self._path()
        if path == "/v1/models":
            if self._authorised():
                self._send_json(200, {"object": "list", "data": [self.stub.model_object()]})
        elif path == f"/v1/models/{self.stub.model}":
            if self._authorised():
                self._send_json(200, self.stub.model_object())
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """``POST /v1/chat/completions``."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self._path() != "/v1/chat/completions":
            self._not_found()
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            self._send_json(400, {"error": {"message": f"invalid JSON: {exc}", "type": "invalid_request_error"}})
            return
        self.stub._record(body)
        if not self._authorised():
            return
        if not self.stub._wait(body, self.connection):
            self.stub._record_disconnect(body)  # the client gave up (e.g. its run was cancelled)
            return
        try:
            reply = Reply.coerce(self.stub.policy(body))
        except Exception as exc:  # a broken policy should be visible, not hang the client
            self._send_json(500, {"error": {"message": f"stub policy failed: {exc!r}", "type": "server_error"}})
            return
        model = body.get("model") or self.stub.model
        try:
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for chunk in _chunks(body, reply, model):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            else:
                self._send_json(200, _completion(body, reply, model))
        except (BrokenPipeError, ConnectionResetError):  # hung up while we answered: no traceback
            self.stub._record_disconnect(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], stub: "StubOpenAIServer") -> None:
        self.stub = stub
        super().__init__(address, _Handler)


class StubOpenAIServer:
    """An OpenAI-compatible Chat Completions server on 127.0.0.1, run in a daemon thread.

    Use as a context manager (``with StubOpenAIServer() as s: ... s.base_url``) or call
    :meth:`start` / :meth:`stop` yourself.

    Args:
        policy: ``policy(request_json) -> Reply`` deciding each reply (default :func:`cfo_script`).
        port: port to bind; ``0`` (default) picks a free one.
        model: model id listed by ``GET /v1/models``.
        bad_keys: bearer tokens answered with an OpenAI-style HTTP 401.
        verbose: log each HTTP request to stderr.
        delay_s: seconds each chat completion waits before it answers (default 0: at once), or
            ``delay_s(request_json) -> seconds``. Read per request: assign ``server.delay_s`` to
            change it while the server runs; :meth:`release` ends the waits in progress.

    Attributes:
        requests: every ``POST /v1/chat/completions`` JSON body received, in order.
        disconnected: the request bodies whose client hung up before it got its answer.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        model: str = "stub-model",
        bad_keys: Iterable[str] = ("bad-key",),
        verbose: bool = False,
        delay_s: Delay = 0.0,
    ) -> None:
        self.policy: Policy = policy or cfo_script
        self.model = model
        self.bad_keys = frozenset(bad_keys)
        self.verbose = verbose
        self.delay_s: Delay = delay_s
        self.requests: list[dict[str, Any]] = []
        self.disconnected: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._released = 0  # bumped by release(): a waiting request that saw another value answers
        self._host = host
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "StubOpenAIServer":
        """Bind the socket and start serving in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            return self
        self._httpd = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="stub-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent); delayed requests answer at once."""
        if self._httpd is None:
            return
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "StubOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses
    @property
    def port(self) -> int:
        """The bound port (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError("StubOpenAIServer is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """Value for ``OPENAI_BASE_URL``: ``http://127.0.0.1:<port>/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    # -- helpers
    def model_object(self) -> dict[str, Any]:
        """The ``model`` object listed by ``GET /v1/models``."""
        return {"id": self.model, "object": "model", "created": 0, "owned_by": "stub"}

    def release(self) -> None:
        """End the delays of the requests waiting now: they answer at once. Later requests wait
        their ``delay_s`` again (set ``delay_s = 0`` first for a fast model from now on)."""
        with self._lock:
            self._released += 1

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _record_disconnect(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.disconnected.append(body)

    def _wait(self, body: dict[str, Any], conn: socket.socket) -> bool:
        """Wait out this request's delay; False when its client hung up meanwhile."""
        delay = self.delay_s(body) if callable(self.delay_s) else self.delay_s
        if not delay or delay <= 0:
            return True
        deadline = time.monotonic() + float(delay)
        with self._lock:
            released = self._released
        while True:
            remaining = deadline - time.monotonic()
            with self._lock:
                if remaining <= 0 or self._released != released:
                    return True
            # Sleep on the socket: readable before the answer means the client closed it (EOF) or reset it.
            step = min(remaining, 0.05)
            readable, _, _ = select.select([conn], [], [], step)
            if readable:
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
                time.sleep(step)  # bytes after the request (not an EOF): don't spin on them


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print the bound port as the first stdout line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--script", default="cfo", choices=sorted(SCRIPTS), help="reply policy")
    parser.add_argument("--model", default="stub-model", help="model id for GET /v1/models")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="wait this long before each chat completion answers")
    args = parser.parse_args(argv)

    stub = StubOpenAIServer(
        SCRIPTS[args.script], port=args.port, host=args.host, model=args.model, verbose=args.verbose, delay_s=args.delay
    )
    httpd = _Server((args.host, args.port), stub)
    stub._httpd = httpd  # so .port / .base_url work

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    print(httpd.server_address[1], flush=True)
    print(f"stub OpenAI server on {stub.base_url} (script={args.script})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.1)
    except SystemExit:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
