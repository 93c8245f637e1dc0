"""The `cfo-desk` command: the app's services without the browser.

    cfo-desk worker     execute queued runs from the store until stopped (SIGTERM or Ctrl-C)

A worker process shares the store (`DATABASE_URL`, normally PostgreSQL for several processes)
and the data home (`CFO_DESK_HOME`) with the app processes. Every app process runs a worker of
its own too; a separate worker adds capacity, or keeps runs going while app processes restart.
Each run is claimed by exactly one worker (the thread lease in services/runs.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from sqlalchemy.engine import make_url

from cfo_desk.config import get_settings


def _worker(args: argparse.Namespace) -> int:
    from cfo_desk.services import worker as worker_svc
    from cfo_desk.storage.db import get_engine

    settings = get_settings()
    get_engine()  # fail early, with the store's own error, when it can't be reached; upgrades it
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    worker = worker_svc.RunWorker().start()
    url = make_url(settings.db_url).render_as_string(hide_password=True)
    print(
        f"cfo-desk worker {worker.owner}: store {url}, up to {settings.cfo_desk_runs_per_process} run(s) at once; "
        "stop with Ctrl-C or SIGTERM",
        flush=True,
    )
    done.wait()
    print("stopping: open runs are recorded as interrupted", flush=True)
    worker.shutdown(timeout=args.grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cfo-desk` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="cfo-desk", description="CFO Desk from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="execute queued runs from the store until stopped")
    w.add_argument("--grace", type=float, default=15.0, help="seconds to wait for open runs to be recorded on stop (default 15)")
    w.set_defaults(func=_worker)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
