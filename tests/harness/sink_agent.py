"""An agent process that records guarded calls through the HTTP trace sink (partition, load).

    python -m tests.harness.sink_agent STORE_URL ACK_FILE --sessions N --calls M [--pause S]

Runs ``N`` sessions of ``M`` guarded calls each (``durability="group"``: a call returns once its
events are on local disk). After every returned call it appends ``SESSION_ID SEQUENCE`` to
``ACK_FILE`` (flushed): the events up to that sequence were acknowledged. At the end it closes
the runtime (the sink drains for the URL's ``drain`` seconds) and prints the sink's stats as
one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import cra_agents as cra
from cra_agents.examples import atlas_path
from cra_agents.trace import HttpSink

READ = {"repo": "acme/app", "path": "README.md"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("acks")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    runtime = cra.Runtime([atlas_path("github-ops")], store=args.store, durability="group")
    sink = runtime.store
    assert isinstance(sink, HttpSink)
    started = time.perf_counter()
    with open(args.acks, "a", encoding="utf-8") as acks:
        for index in range(args.sessions):
            session = runtime.create_session(f"agent-{index}", "Read the docs")
            sid = session.session_id
            for _ in range(args.calls):
                with runtime.call("read_file_contents", READ, session_id=sid) as call:
                    call.result = "ok"
                acks.write(f"{sid} {sink.last_sequence(sid)}\n")
                acks.flush()
                if args.pause:
                    time.sleep(args.pause)
            runtime.end_session(sid)
            acks.write(f"{sid} {sink.last_sequence(sid)}\n")
            acks.flush()
    recorded = time.perf_counter() - started
    runtime.close()
    stats = dataclasses.asdict(sink.stats())
    stats["recording_seconds"] = recorded
    stats["closing_seconds"] = time.perf_counter() - started - recorded
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
