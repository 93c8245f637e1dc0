"""Run one step of ingest (a parse) in a short-lived worker process with OS limits.

A hostile or simply huge upload must not take the app process with it: a 97 KB CSV with 5,000
columns crashed DuckDB with a segfault, 1,000 columns had DuckDB report 18.8 GiB in use, and
xlsx bombs passed 6 GB. `call` runs a function of `cfo_desk.analytics.ingest` in a child process
(the approach of `isolation.py`: `subprocess` fork+exec of `python -m`, so nothing of the app's
threads or DuckDB state is inherited and the app's `__main__` is not re-imported; a minimal
environment; a session of its own; pipes):

- **Memory.** The child sets RLIMIT_AS to `CFO_DESK_INGEST_MEMORY_GB` (default 4) and RLIMIT_CORE 0,
  and DuckDB's own `memory_limit` inside it stays below that (set by ingest). A child that runs out
  of address space, or dies of a signal (the segfault), gives `IngestError("<file>: the file needed
  more than N GB of memory to read ...")`.
- **Time.** RLIMIT_CPU (3 x the wall limit) as a backstop, and the parent kills the child at
  `CFO_DESK_INGEST_TIMEOUT_S` (default 300): `IngestError("<file>: reading the file took longer
  than N seconds ...")`.
- **Results.** The child returns the function's (picklable) result, or re-raises its IngestError
  / ValueError in the parent. Anything else becomes an IngestError naming the file.

One process per call (ingest is rare, and a fresh process returns all its memory to the system
when it exits). Starting one (Python, then importing ingest and DuckDB) costs about 0.2-0.5 s, so
one spare is kept started and waiting: each call takes the spare when its limits match, and
starts the next spare in the background. An idle spare is about 60 MB and uses no CPU; it exits
when this process does (its pipe closes). The spare is a fresh process all the same: nothing of
one upload is left in the process that reads the next.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from collections.abc import Callable
from typing import Any

from cfo_desk.analytics.isolation import _is_memory_error, start_child

DEFAULT_MEMORY_GB = 4.0
DEFAULT_TIMEOUT_S = 300.0
POLL_S = 0.05


def memory_message(name: str, gb: float) -> str:
    return (
        f"{name}: the file needed more than {gb:g} GB of memory to read and was refused. "
        "Split it into smaller files, or remove unused columns."
    )


def timeout_message(name: str, timeout_s: float) -> str:
    return (
        f"{name}: reading the file took longer than {timeout_s:g} seconds and was stopped. "
        "Split it into smaller files, or remove unused columns."
    )


# ----------------------------------------------------------------------------------------- child


def _child_main(in_fd: int, out_fd: int, memory_bytes: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    inbox = Connection(in_fd, writable=False)
    outbox = Connection(out_fd, readable=False)
    # Ready before the job arrives (a spare waits here): imports and DuckDB's first connection.
    import duckdb  # noqa: PLC0415

    from cfo_desk.analytics import ingest  # noqa: PLC0415

    ingest._IN_WORKER = True
    duckdb.connect().close()
    try:
        func_name, kwargs = inbox.recv()
    except (EOFError, OSError):  # a spare no one took: the app ended or dropped it
        return
    if "progress" in kwargs:  # True: reports go up the same pipe as the reply; False: none
        kwargs["progress"] = (lambda fraction, text: outbox.send(("progress", fraction, text))) if kwargs["progress"] else None
    try:
        module_name, _, attr = func_name.rpartition(".")
        func = getattr(importlib.import_module(module_name), attr)
        reply: tuple = ("ok", func(**kwargs))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a reply
        reply = _failure(exc)
    try:
        outbox.send(reply)
    except MemoryError:
        outbox.send(("memory",))
    except Exception as exc:  # noqa: BLE001 - an unpicklable result
        outbox.send(("error", f"{type(exc).__name__}: {exc}"))
    # Everything is closed and answered: leave without the interpreter's teardown (unloading
    # DuckDB and the imports takes 50-100 ms, which the parent would wait for).
    os._exit(0)


def _failure(exc: BaseException) -> tuple:
    from cfo_desk.analytics.ingest import IngestError  # noqa: PLC0415

    if _is_memory_error(exc):
        return ("memory",)
    if isinstance(exc, (IngestError, ValueError)):
        try:
            return ("raise", pickle.loads(pickle.dumps(exc)))
        except Exception:  # noqa: BLE001
            pass
    return ("error", f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------- parent


def call(
    func_name: str,
    kwargs: dict[str, Any],
    *,
    name: str,
    memory_gb: float,
    timeout_s: float,
    on_progress: Callable[[float, str], None] | None = None,
) -> Any:
    """`func_name(**kwargs)` (a dotted name in `cfo_desk`) in a fresh child process with the
    limits above; returns its result. `name` (the uploaded file's name) prefixes the errors.
    With ``kwargs["progress"] = True`` the child sends ``("progress", fraction, text)`` messages
    while it works; each is passed to ``on_progress`` (in this thread) before the reply."""
    from cfo_desk.analytics.ingest import IngestError  # noqa: PLC0415

    memory_bytes = int(memory_gb * (1 << 30))
    cpu_s = int(3 * timeout_s) + 5
    proc, tx, rx = _take_child(memory_bytes, cpu_s)
    deadline = time.monotonic() + timeout_s
    reply: tuple | None = None
    try:
        tx.send((func_name, kwargs))
        while reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IngestError(timeout_message(name, timeout_s))
            try:
                if rx.poll(min(left, 1.0)):
                    message = rx.recv()
                    if message[0] == "progress":
                        if on_progress is not None:
                            on_progress(message[1], message[2])
                        continue
                    reply = message
                    break
            except (EOFError, OSError):
                pass
            else:
                if proc.poll() is None:
                    continue
            # The pipe closed or the child exited without an answer: it died.
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code == -signal.SIGXCPU:
                raise IngestError(timeout_message(name, timeout_s))
            if code is not None and code < 0:  # a signal: under RLIMIT_AS, an allocation that failed, or a crash
                raise IngestError(memory_message(name, memory_gb))
            raise IngestError(f"{name}: the file could not be read (the reader ended unexpectedly, exit code {code})")
    except BrokenPipeError:
        raise IngestError(memory_message(name, memory_gb)) from None
    finally:
        # Without a reply (a timeout, or an exception here such as the page being left), the
        # child is killed and waited for before the caller's locks are released: it may be
        # writing into a file lent to it, and what it has not committed is then dropped.
        if reply is None and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        tx.close()
        rx.close()
    if reply[0] == "ok":
        return reply[1]
    if reply[0] == "memory":
        raise IngestError(memory_message(name, memory_gb))
    if reply[0] == "raise":
        raise reply[1]
    raise IngestError(f"{name}: the file could not be read ({reply[1]})")


_Child = tuple[subprocess.Popen, Connection, Connection]
_spare: tuple[tuple[int, int], _Child] | None = None  # ((memory bytes, CPU s), child) started ahead
_spare_lock = threading.Lock()


def _start(memory_bytes: int, cpu_s: int) -> _Child:
    return start_child("cfo_desk.analytics.ingest_worker", str(memory_bytes), str(cpu_s), stderr=subprocess.DEVNULL)


def _stop(child: _Child) -> None:
    proc, tx, rx = child
    proc.kill()
    proc.wait()
    tx.close()
    rx.close()


def _refill(limits: tuple[int, int]) -> None:
    """Start a spare with these limits unless one is there (runs in a background thread)."""
    global _spare
    try:
        child = _start(*limits)
    except OSError:  # pragma: no cover - no process could be started: the next call starts one
        return
    with _spare_lock:
        if _spare is None:
            _spare, child = (limits, child), None
    if child is not None:
        _stop(child)


def _take_child(memory_bytes: int, cpu_s: int) -> _Child:
    """The spare child when it has these limits and is alive, else a new one; then the next spare
    is started in the background."""
    global _spare
    limits = (memory_bytes, cpu_s)
    with _spare_lock:
        spare, _spare = _spare, None
    child = None
    if spare is not None:
        if spare[0] == limits and spare[1][0].poll() is None:
            child = spare[1]
        else:
            _stop(spare[1])
    if child is None:
        child = _start(memory_bytes, cpu_s)
    threading.Thread(target=_refill, args=(limits,), name="cfo-ingest-spare", daemon=True).start()
    return child


@atexit.register
def _drop_spare() -> None:
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        _stop(spare[1])


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
