"""A second (or third) app process for the process tests: same store and data home (from the
environment), a scripted model, one role per run.

    python tests/proc_agent.py worker --delay S     the `cfo-desk worker` command, model thinking S s per request
    python tests/proc_agent.py worker --hang S      same, but its model runs one query, then thinks S s
    python tests/proc_agent.py ask PLAN_JSON        after "go T" on stdin: ask [thread_id, content] i at T + i*step
    python tests/proc_agent.py claim PLAN_JSON      after "go T" on stdin: claim run i at T + i*step

Each prints "ready" once imported; ask/claim print one JSON line of results at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from agent_script import sql_script, then_wait  # noqa: E402
from pydantic_ai import models  # noqa: E402

from cfo_desk.agent.core import use_model  # noqa: E402

models.ALLOW_MODEL_REQUESTS = False


def _wait_go() -> float:
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    assert line and line[0] == "go", line
    return float(line[1])


def main(argv: list[str]) -> int:
    role = argv[0]
    name = os.environ.get("PROC_NAME", f"pid{os.getpid()}")
    if role == "worker":
        if "--hang" in argv:
            use_model(then_wait("SELECT 1 AS one", float(argv[argv.index("--hang") + 1])))
        else:
            delay = float(argv[argv.index("--delay") + 1]) if "--delay" in argv else 0.0
            use_model(sql_script(["SELECT 1 AS one"], {"answer_markdown": f"Answered by {name}."}, delay_s=delay))
        from cfo_desk.cli import main as cli_main

        print("ready", flush=True)
        return cli_main(["worker", "--grace", "5"])
    plan = json.loads(argv[1])
    step = float(os.environ.get("PROC_STEP_S", "0.3"))
    from cfo_desk.services import runs, turns
    from cfo_desk.storage.db import get_engine, session_scope

    get_engine()  # connect (and check the schema) before the start signal
    use_model(sql_script([], {"answer_markdown": f"Answered for {name}."}, delay_s=0.02))
    start = _wait_go()
    results = []
    for i, item in enumerate(plan):
        time.sleep(max(0.0, start + i * step - time.time()))
        with session_scope() as session:
            if role == "ask":
                thread_id, content = item
                reply = turns.ask(session=session, thread_id=thread_id, content=content)
                results.append([reply.id, reply.parent_id, str(reply.status)])
            elif role == "claim":
                results.append(runs.claim_runs(session=session, owner=name, limit=1, lease_s=60, run_ids=[item]))
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
