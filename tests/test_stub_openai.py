"""Tests for the stub OpenAI Chat Completions server, driven by a real pydantic-ai agent.

No network beyond 127.0.0.1: the agent is built from the same ``openai-chat:stub-model`` string and
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` environment variables the app uses.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import pydantic_ai.models
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.exceptions import ModelAPIError, ModelAuthenticationError, ModelHTTPError, ModelNotFoundError
from pydantic_ai.messages import FunctionToolCallEvent, FunctionToolResultEvent

try:  # rootdir-relative import when tests/ is a plain directory (pytest's default "prepend" mode)
    from stub_openai import DEFAULT_SQL, Reply, StubOpenAIServer, ToolCall, cfo_script
except ImportError:  # pragma: no cover - tests/ turned into a package
    from tests.stub_openai import DEFAULT_SQL, Reply, StubOpenAIServer, ToolCall, cfo_script

STUB_PATH = Path(__file__).with_name("stub_openai.py")
MODEL = "openai-chat:stub-model"


class FinalAnswer(BaseModel):
    """The agent's answer."""

    answer_markdown: str


class Clarification(BaseModel):
    """A question back to the user."""

    question: str


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch):
    """A running stub server with the app's env vars pointing at it."""
    for name in ("STUB_SQL", "STUB_FIX_SQL", "STUB_ANSWER_JSON", "STUB_OUTPUT_TOOL"):
        monkeypatch.delenv(name, raising=False)
    # Requests only go to 127.0.0.1, so allow them even if a conftest disabled model requests.
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    with StubOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def make_agent(sql_calls: list[str], *, fail_first_sql: bool = False) -> Agent:
    """The CFO agent's shape: two tools and ``[FinalAnswer, Clarification]`` outputs."""
    agent = Agent(MODEL, output_type=[FinalAnswer, Clarification], instructions="You are a CFO.")

    @agent.tool_plain
    def list_tables() -> list[str]:
        """List the workspace tables."""
        return ["invoices", "subscriptions"]

    @agent.tool_plain
    def run_sql(purpose: str, sql: str) -> str:
        """Run one read-only SELECT."""
        sql_calls.append(sql)
        if fail_first_sql and len(sql_calls) == 1:
            raise ModelRetry('Binder Error: Referenced column "mrr" not found')
        return "answer\n42"

    return agent


def tool_names_called(server: StubOpenAIServer) -> list[str]:
    """Names of the tool calls the stub issued, as replayed in the last request's history."""
    last = server.requests[-1]["messages"]
    return [c["function"]["name"] for m in last if m["role"] == "assistant" for c in m.get("tool_calls") or []]


def test_non_streaming_run_ends_with_final_answer(stub: StubOpenAIServer) -> None:
    sql_calls: list[str] = []
    result = make_agent(sql_calls).run_sync("What was MRR?")

    assert result.output == FinalAnswer(answer_markdown="The answer is **42**.")
    assert sql_calls == [DEFAULT_SQL]
    assert tool_names_called(stub) == ["list_tables", "run_sql"]
    assert len(stub.requests) == 3
    assert not any(r.get("stream") for r in stub.requests)
    tools = [t["function"]["name"] for t in stub.requests[0]["tools"]]
    assert {"list_tables", "run_sql", "final_result_FinalAnswer", "final_result_Clarification"} <= set(tools)
    assert stub.requests[0]["tool_choice"] == "required"


def test_streaming_events_and_env_overrides(stub: StubOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_SQL", "SELECT month, sum(amount) FROM invoices GROUP BY 1")
    monkeypatch.setenv("STUB_ANSWER_JSON", json.dumps({"answer_markdown": "MRR was **$12k**."}))
    events: list[Any] = []

    async def handler(ctx: Any, stream: Any) -> None:
        async for event in stream:
            events.append(event)

    sql_calls: list[str] = []
    result = make_agent(sql_calls).run_sync("What was MRR?", event_stream_handler=handler)

    assert result.output == FinalAnswer(answer_markdown="MRR was **$12k**.")
    assert sql_calls == ["SELECT month, sum(amount) FROM invoices GROUP BY 1"]
    calls = [e.part.tool_name for e in events if isinstance(e, FunctionToolCallEvent)]
    results = [e.part.tool_name for e in events if isinstance(e, FunctionToolResultEvent)]
    assert calls == ["list_tables", "run_sql"]
    assert results == ["list_tables", "run_sql"]
    run_sql_call = next(e for e in events if isinstance(e, FunctionToolCallEvent) and e.part.tool_name == "run_sql")
    assert run_sql_call.part.args_as_dict()["sql"] == sql_calls[0]
    # An event handler makes pydantic-ai stream, asking for usage in the last chunk.
    assert all(r.get("stream") is True for r in stub.requests)
    assert all(r.get("stream_options") == {"include_usage": True} for r in stub.requests)
    assert result.usage.output_tokens > 0  # a property in pydantic-ai 2.x


def test_model_retry_reissues_run_sql(stub: StubOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_FIX_SQL", "SELECT 43 AS answer")
    sql_calls: list[str] = []
    result = make_agent(sql_calls, fail_first_sql=True).run_sync("What was MRR?")

    assert isinstance(result.output, FinalAnswer)
    assert sql_calls == [DEFAULT_SQL, "SELECT 43 AS answer"]
    assert tool_names_called(stub) == ["list_tables", "run_sql", "run_sql"]
    retry_message = stub.requests[2]["messages"][-1]
    assert retry_message["role"] == "tool" and "Binder Error" in retry_message["content"]


def test_policy_reissues_run_sql_only_once() -> None:
    """Stateless policy: after a second failing run_sql it gives up and calls the output tool."""
    tools = [{"type": "function", "function": {"name": n}} for n in ("run_sql", "final_result_FinalAnswer")]

    def call(name: str, cid: str) -> dict[str, Any]:
        return {"role": "assistant", "tool_calls": [{"id": cid, "type": "function", "function": {"name": name}}]}

    error = {"role": "tool", "tool_call_id": "b", "content": '{"error": "Binder Error"}'}
    once = [{"role": "user", "content": "q"}, call("list_tables", "a"), {"role": "tool", "tool_call_id": "a"}]
    once += [call("run_sql", "b"), error]
    assert cfo_script({"messages": once, "tools": tools}).tool_calls[0].name == "run_sql"
    twice = once + [call("run_sql", "c"), {**error, "tool_call_id": "c"}]
    assert cfo_script({"messages": twice, "tools": tools}).tool_calls[0].name == "final_result_FinalAnswer"
    assert cfo_script({"messages": [{"role": "assistant", "content": "hi"}]}).text == "stub: nothing to do"


def test_custom_policy_and_text_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    seen: list[dict[str, Any]] = []

    def policy(request: dict[str, Any]) -> Reply:
        seen.append(request)
        return Reply(text="hello from a custom policy")

    with StubOpenAIServer(policy) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "x")
        assert Agent(MODEL).run_sync("hi").output == "hello from a custom policy"
        assert seen == server.requests and seen[0]["model"] == "stub-model"
    (coerced,) = Reply.coerce([("run_sql", {"sql": "SELECT 1"})]).tool_calls
    assert isinstance(coerced, ToolCall) and (coerced.name, coerced.arguments) == ("run_sql", {"sql": "SELECT 1"})
    assert Reply.coerce("plain").text == "plain"


def test_bad_key_raises_model_authentication_error(stub: StubOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "bad-key")
    with pytest.raises(ModelAuthenticationError) as excinfo:
        make_agent([]).run_sync("What was MRR?")
    error = excinfo.value
    assert isinstance(error, ModelAPIError) and isinstance(error, ModelHTTPError)
    assert error.status_code == 401
    assert error.body["message"] == "Incorrect API key provided"  # readable text for the UI
    assert error.provider_error_code == "invalid_api_key"
    assert len(stub.requests) == 1  # a 401 is not retried


def test_responses_api_model_string_is_not_served(stub: StubOpenAIServer) -> None:
    """`openai:` strings use /v1/responses, which a Chat-Completions-only server 404s."""
    with pytest.raises(ModelNotFoundError):
        Agent("openai:stub-model").run_sync("hi")
    assert stub.requests == []


def test_http_surface(stub: StubOpenAIServer) -> None:
    def get(path: str, key: str = "x") -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(stub.base_url + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    assert get("/models") == (200, {"object": "list", "data": [stub.model_object()]})
    assert get("/responses")[0] == 404  # the Responses API (`openai:` strings) is not served
    status, body = get("/models", key="bad-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"

    # Streamed plain text ends with [DONE]; usage only when asked for.
    req = urllib.request.Request(
        stub.base_url + "/chat/completions",
        data=json.dumps({"model": "stub-model", "stream": True, "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        lines = [ln for ln in resp.read().decode().splitlines() if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "stub: nothing to do"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-1]


def _post_completion(base_url: str, messages: list[dict[str, Any]], timeout: float = 10) -> dict[str, Any]:
    req = urllib.request.Request(
        base_url + "/chat/completions",
        data=json.dumps({"model": "stub-model", "messages": messages}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def _wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_delay_is_per_request_changeable_and_releasable() -> None:
    user = [{"role": "user", "content": "q"}]
    with StubOpenAIServer(delay_s=0.3) as server:
        t0 = time.monotonic()
        body = _post_completion(server.base_url, user)
        assert time.monotonic() - t0 >= 0.3
        assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "list_tables"

        # A function of the request: hold only requests whose last message is a tool result.
        server.delay_s = lambda request: 60.0 if request["messages"][-1]["role"] == "tool" else 0.0
        t0 = time.monotonic()
        _post_completion(server.base_url, user)
        assert time.monotonic() - t0 < 0.3

        replies: list[dict[str, Any]] = []
        tool_turn = user + [
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "list_tables"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "[]"},
        ]
        waiter = threading.Thread(target=lambda: replies.append(_post_completion(server.base_url, tool_turn)))
        waiter.start()
        _wait_until(lambda: len(server.requests) == 3)
        time.sleep(0.2)
        assert replies == []  # still held
        t0 = time.monotonic()
        server.release()
        waiter.join(5)
        assert replies and time.monotonic() - t0 < 1.0
        assert replies[0]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "run_sql"
        assert server.disconnected == []


def test_client_hanging_up_during_a_delay_is_recorded() -> None:
    body = json.dumps({"model": "stub-model", "messages": [{"role": "user", "content": "q"}]}).encode()
    with StubOpenAIServer(delay_s=60) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            _wait_until(lambda: len(server.requests) == 1)
        _wait_until(lambda: len(server.disconnected) == 1)
        assert server.disconnected[0]["messages"][0]["content"] == "q"


def test_cancelled_agent_run_hangs_up_on_a_delayed_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the app's Stop relies on: cancelling the agent's task closes its HTTP request."""
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", True)
    with StubOpenAIServer(delay_s=60) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")

        async def run_then_cancel() -> None:
            task = asyncio.create_task(make_agent([]).run("What was MRR?"))
            while not server.requests:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run_then_cancel())
        _wait_until(lambda: len(server.disconnected) == 1)
        assert len(server.requests) == 1


def test_subprocess_entry_point() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(STUB_PATH), "--port", "0", "--script", "cfo", "--delay", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
            body = json.load(resp)
        assert body["data"][0]["id"] == "stub-model"
        t0 = time.monotonic()  # --delay holds chat completions (not GETs)
        reply = _post_completion(f"http://127.0.0.1:{port}/v1", [{"role": "user", "content": "q"}])
        assert time.monotonic() - t0 >= 0.3 and reply["object"] == "chat.completion"
    finally:
        proc.terminate()
        try:
            returncode = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            raise
    assert returncode == 0, proc.stderr.read() if proc.stderr else ""
