"""The background worker: executes queued runs outside any page's script run.

Each app process starts one `RunWorker` (the UI holds it with `st.cache_resource`); a separate
`cfo-desk worker` process runs the same loop. The worker is a daemon thread with its own asyncio
event loop. Every `CFO_DESK_RUN_POLL_S` seconds (or at once when this process enqueued something)
it sweeps expired leases (`runs.recover_expired`) and claims queued runs up to
`CFO_DESK_RUNS_PER_PROCESS` (`runs.claim_runs`); each claimed run is an asyncio task
(`execute_run`). Store calls run in worker threads (`asyncio.to_thread`) so the loop never waits on
the database; the agent's sync tools (DuckDB) run in pydantic-ai's worker threads.

While a run goes, its task checks the store every poll interval: it renews the lease every third
of `CFO_DESK_RUN_LEASE_S`, and stops the run when the analyst asked (`Run.stop_requested`) or the
lease was lost. Stopping sets the agent's stop event first (interrupting a DuckDB query in
flight within ~0.05 s), then cancels the agent task; the turn is recorded as stopped with the
progress seen so far. Nothing a page does (rerun, navigation, reload, a closed tab) reaches
this thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic_ai.models import Model

from cfo_desk.agent.runner import Progress, TurnOutcome, run_agent_async
from cfo_desk.config import get_settings
from cfo_desk.services import runs, turns
from cfo_desk.services.errors import ServiceError
from cfo_desk.storage.db import session_scope
from cfo_desk.storage.files import remove_tree
from cfo_desk.storage.models import Message, MessageStatus, RunStatus

log = logging.getLogger(__name__)

_TOOL_NAME = re.compile(r"[^\w.-]")
MAX_STEP_SQL_CHARS = 5_000  # progress rows keep this much of each query's text (the artifact keeps all)
MAX_STEP_TEXT_CHARS = 500


def new_owner(kind: str = "worker") -> str:
    """A worker's name in leases and runs: host:pid:kind-token (unique per worker instance)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{kind}-{uuid.uuid4().hex[:8]}"


def _in_session(url: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    with session_scope(url) as session:
        return fn(session=session, **kwargs)


def _step(p: Progress, at_s: float) -> dict[str, Any]:
    def cut(text: str | None, n: int) -> str | None:
        return None if text is None else (text if len(text) <= n else text[: n - 1] + "…")

    return {
        "kind": p.kind,
        "tool": _TOOL_NAME.sub("", p.tool or "")[:64],  # the model names the tool: keep it plain text
        "purpose": cut(p.purpose, MAX_STEP_TEXT_CHARS),
        "sql": cut(p.sql, MAX_STEP_SQL_CHARS),
        "row_count": p.row_count,
        "error": cut(p.error, MAX_STEP_TEXT_CHARS),
        "at_s": round(at_s, 2),
    }


async def execute_run(
    run_id: int,
    *,
    owner: str,
    url: str,
    model: Model | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message | None:
    """Execute a run `owner` has claimed, to its committed end; returns the reply, or None when
    the run could not start or the lease was lost (nothing committed, files removed).

    Cancelling this coroutine (worker shutdown) records the turn as interrupted."""
    settings = get_settings()
    poll_s, lease_s = settings.cfo_desk_run_poll_s, settings.cfo_desk_run_lease_s
    try:
        started = await asyncio.to_thread(_in_session, url, runs.begin_run, run_id=run_id, owner=owner)
    except asyncio.CancelledError:  # shutdown before the run began: the exit sweep recovers it
        return None
    plan = started.plan
    if plan is None:
        return None
    progress: list[dict[str, Any]] = []
    t0 = time.monotonic()

    async def record(step: Progress) -> None:
        progress.append(_step(step, time.monotonic() - t0))
        if on_progress is not None:
            on_progress(step)
        try:  # progress is for watching; a failed save must not fail the turn
            await asyncio.to_thread(_in_session, url, runs.save_progress, run_id=run_id, owner=owner, progress=list(progress))
        except Exception:
            log.warning("run %s: progress not saved", run_id, exc_info=True)

    agent_task = asyncio.create_task(
        run_agent_async(
            prompt=plan.prompt,
            deps=plan.deps,
            history=plan.history,
            model=model or turns.configured_model(),
            usage_limits=plan.usage_limits,
            on_progress=record,
        )
    )

    async def halt(why: str) -> str:
        plan.deps.stop.set()  # interrupts a query in flight, so the cancel lands at once
        agent_task.cancel()
        try:
            await agent_task
        except BaseException:  # noqa: BLE001 - the agent's own cancellation
            pass
        return why

    reason: str | None = None
    outcome: TurnOutcome | None = None
    last_beat = time.monotonic()
    try:
        while not agent_task.done():
            await asyncio.wait({agent_task}, timeout=poll_s)
            if agent_task.done():
                break
            renew = time.monotonic() - last_beat >= lease_s / 3
            try:
                lost, stop = await asyncio.to_thread(
                    _in_session, url, runs.heartbeat, owner=owner, run_ids=[run_id], lease_s=lease_s, renew=renew
                )
            except Exception:  # the store hiccuped: the lease has slack, try again next poll
                log.warning("run %s: heartbeat failed", run_id, exc_info=True)
                continue
            if renew:
                last_beat = time.monotonic()
            if lost or stop:
                reason = await halt("lost" if lost else "stopped")
        if reason is None:
            outcome = agent_task.result()
    except asyncio.CancelledError:  # this coroutine was cancelled: the worker is shutting down
        reason = await halt("shutdown")
    except Exception as exc:  # a bug: end the agent too, and record the failure rather than hang
        log.exception("run %s failed outside the agent", run_id)
        await halt("error")
        outcome = TurnOutcome(None, None, [], f"The run failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]}).", time.monotonic() - t0)
    elapsed = time.monotonic() - t0
    status: MessageStatus | None = None
    if reason == "lost":
        remove_tree(plan.deps.run_dir)
        return None
    if reason == "stopped":
        outcome, status = runs.stopped_outcome(elapsed), MessageStatus.stopped
    elif reason == "shutdown":
        outcome, status = TurnOutcome(None, None, [], turns.INTERRUPTED, elapsed), MessageStatus.interrupted
    return await asyncio.to_thread(
        _in_session, url, runs.finish_run, started=started, owner=owner, outcome=outcome, progress=progress, status=status
    )


class RunWorker:
    """One process's executor of queued runs: a daemon thread running an asyncio loop.

    `start()` is idempotent; `wake()` makes it look at the queue now (after this process enqueued);
    `shutdown()` records its open runs as interrupted and stops the thread."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner or new_owner()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopping = False
        self.tasks: dict[int, asyncio.Task] = {}
        self._lock = threading.Lock()

    def start(self) -> RunWorker:
        """Start the thread (once) and wait until its loop runs; returns self."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="cfo-desk-runs", daemon=True)
                self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def alive(self) -> bool:
        """True while the worker's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Look at the queue now instead of at the next poll (thread-safe; no-op when not running)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop claiming, record open runs as interrupted, and end the thread (waits `timeout` s)."""
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ready.set()
        while not self._stopping:
            try:
                await self._tick()
            except RuntimeError as exc:
                if "after shutdown" in str(exc):  # the interpreter is exiting: its thread pools are gone
                    break
                log.exception("run worker tick failed")
            except Exception:  # a store hiccup must not end the worker
                log.exception("run worker tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=get_settings().cfo_desk_run_poll_s)
            except TimeoutError:
                pass
            self._wake.clear()
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:  # whatever is still leased to this worker (claimed, not begun) is recovered now
            url = get_settings().db_url
            if await asyncio.to_thread(_in_session, url, runs.abandon_leases, owner=self.owner):
                await asyncio.to_thread(_in_session, url, runs.recover_expired)
        except Exception:  # the interpreter may be exiting: the leases then expire on their own
            log.warning("run worker: leases not released at shutdown", exc_info=True)

    async def _tick(self) -> None:
        settings = get_settings()
        url = settings.db_url
        try:
            await asyncio.to_thread(_in_session, url, runs.recover_expired)
        except Exception:  # a sweep that fails must not stop this worker from claiming
            log.exception("run worker: recovery sweep failed")
        room = settings.cfo_desk_runs_per_process - len(self.tasks)
        if room <= 0 or self._stopping:
            return
        claimed = await asyncio.to_thread(
            _in_session, url, runs.claim_runs, owner=self.owner, limit=room, lease_s=settings.cfo_desk_run_lease_s
        )
        if self._stopping:  # shutting down: the exit sweep records these as interrupted
            return
        for run_id in claimed:
            task = asyncio.create_task(self._guarded(run_id, url), name=f"run-{run_id}")
            self.tasks[run_id] = task
            task.add_done_callback(lambda _t, rid=run_id: (self.tasks.pop(rid, None), self._wake.set()))

    async def _guarded(self, run_id: int, url: str) -> None:
        try:
            await execute_run(run_id, owner=self.owner, url=url)
        except Exception:  # logged; the lease then expires and the sweep records the run interrupted
            log.exception("run %s could not be finished", run_id)


_worker: RunWorker | None = None
_worker_guard = threading.Lock()


def start_worker() -> RunWorker:
    """The process's worker, started on first call (the app calls this once per process)."""
    global _worker
    with _worker_guard:
        if _worker is None or not _worker.alive:
            _worker = RunWorker().start()
            _shutdown_at_exit()
        return _worker


_exit_hook_registered = False


def _shutdown_at_exit() -> None:
    """On a clean exit (SIGTERM to `streamlit run`), record this process's open runs as interrupted
    at once instead of after their leases expire. Registered with threading's exit hooks, which run
    before the interpreter shuts down the thread pools the worker's store calls need (a plain
    `atexit` hook runs after that)."""
    global _exit_hook_registered
    register = getattr(threading, "_register_atexit", None)
    if register is not None and not _exit_hook_registered:
        register(lambda: shutdown_worker(timeout=5.0))
        _exit_hook_registered = True


def wake_worker() -> None:
    """Tell this process's worker (if any) to look at the queue now."""
    if _worker is not None:
        _worker.wake()


def shutdown_worker(timeout: float = 15.0) -> None:
    """Stop this process's worker, if one runs (tests, shutdown)."""
    global _worker
    with _worker_guard:
        worker, _worker = _worker, None
    if worker is not None:
        worker.shutdown(timeout)


def run_inline(
    run_id: int,
    *,
    model: Model | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Message:
    """Execute one queued run on the calling thread (no event loop may run there) and return its
    reply: for the CLI and tests. It claims the run like any worker (so it waits while another run
    holds the thread); if another worker claimed it first, it waits for that run's end.
    Raises ServiceError when the run ended without a reply (e.g. its question was deleted)."""
    settings = get_settings()
    url = settings.db_url
    owner = new_owner("inline")
    while True:
        claimed = _in_session(url, runs.claim_runs, owner=owner, limit=1, lease_s=settings.cfo_desk_run_lease_s, run_ids=[run_id])
        if claimed:
            reply = asyncio.run(execute_run(run_id, owner=owner, url=url, model=model, on_progress=on_progress))
            if reply is not None:
                return reply
        run = _in_session(url, runs.get_run, run_id=run_id)
        if RunStatus(run.status) not in runs.OPEN:
            if run.reply_message_id is None:
                raise ServiceError(f"The run ended without an answer: {run.error or run.status}.")
            return _in_session(url, lambda session, mid: session.get(Message, mid), mid=run.reply_message_id)
        time.sleep(min(settings.cfo_desk_run_poll_s, 0.1))
