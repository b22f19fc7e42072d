"""Child process of the kill -9 harness: records through a real store until killed.

Usage: python crash_child.py STORE_URL DURABILITY ATLAS_DIR

Prints ``WRITER <pid>`` when a writer process records (the parent waits for it to finish
writing what it was handed before it reads the store), ``SESSION <id>`` once, then
``ACK <durable_count>`` after every call that returned, flushing each line, so the parent
knows what was acknowledged when it kills the process.
"""

from __future__ import annotations

import sys

import cra_agents as cra


def main() -> None:
    store, durability, atlas = sys.argv[1:4]
    runtime = cra.Runtime([atlas], store=store, durability=durability)  # type: ignore[arg-type]
    writer = runtime._collector.writer_pid
    if writer is not None:
        sys.stdout.write(f"WRITER {writer}\n")
    session = runtime.create_session("crash-bot", "Triage new bug reports")
    sys.stdout.write(f"SESSION {session.session_id}\n")
    sys.stdout.flush()
    while True:
        runtime.resolve(cra.resolve_request(session))
        info = runtime.session(session.session_id)
        acknowledged = info.durable_count if durability != "async" else info.event_count
        sys.stdout.write(f"ACK {acknowledged}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
