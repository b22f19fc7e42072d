"""`make bench-peers`: @cra.guarded next to Microsoft's Agent Governance Toolkit (AGT) 4.1.0.

Runs in ``.venv-peers`` (AGT is not a dependency of this project). All rows are timed in one
process, three repetitions in alternating order, 20,000 calls each after 2,000 warm-up calls:

- a plain function call;
- ``@cra.guarded("github.file.read")`` on the github-ops atlas, ``jsonl://`` store, ``async``;
- the reference toy guard of ``reference_guard.py`` (JSONL hash chain);
- AGT ``agentmesh.governance.govern(fn, policy=YAML)``, its public wrapper for a tool call:
  (a) audit in memory (``audit=True``, the default); (b) audit file-backed; (c) a denied call;
  (d) the allowed call against a policy of 50 rules.

AGT 4.1.0's ``govern()`` takes no audit file, and ``GovernanceConfig.audit_file`` is documented
but never read by ``GovernedCallable`` (the script checks that no file appears). Row (b) is
therefore assembled from AGT's public pieces the way ``GovernedCallable.__call__`` does it:
``GovernedCallable.engine.evaluate`` then ``AuditLog(sink=FileAuditSink(path, key)).log``.

Then sustained calls/s over 5 s, and RSS growth per call over 20,000 calls (/proc/self/statm).
AGT is imported with ``importlib`` and typed as ``Any``: mypy runs in the main venv without it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cra_agents as cra
from cra_agents.examples import atlas_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleave, load_average, rss_bytes, static
from reference_guard import ToyGuard  # the yardstick, beside this file

ATLAS = atlas_path("github-ops")
CALLS = 20_000
REPS = 3
SUSTAIN_S = 5.0

HEADER = "apiVersion: governance.toolkit/v1\nname: github-ops\ndefault_action: deny\nrules:\n"
ALLOW_READ = (
    "  - name: allow-file-read\n"
    "    condition: \"action.type == 'github.file.read'\"\n"
    "    action: allow\n"
)
DENY_DELETE = (
    "  - name: deny-repo-delete\n"
    "    condition: \"action.type == 'github.repo.delete'\"\n"
    "    action: deny\n"
)


def _policy(extra_rules: int) -> str:
    rules = [ALLOW_READ, DENY_DELETE]
    rules += [
        f"  - name: deny-other-{i}\n"
        f"    condition: \"action.type == 'github.other.action{i}'\"\n"
        "    action: deny\n"
        for i in range(extra_rules)
    ]
    return HEADER + "".join(rules)


def read_file_contents(repo: str, path: str) -> str:
    return path


def agt_tool(action: str, repo: str, path: str) -> str:
    # AGT's govern() reads the action from the ``action`` keyword argument.
    return path


def _sustained(fn: Callable[[], object], seconds: float = SUSTAIN_S) -> float:
    count = 0
    clock = time.perf_counter
    end = clock() + seconds
    started = clock()
    while True:
        for _ in range(100):
            fn()
        count += 100
        if clock() >= end:
            return count / (clock() - started)


def _rss_per_call(fn: Callable[[], object], n: int = CALLS) -> float:
    before = rss_bytes()
    for _ in range(n):
        fn()
    return (rss_bytes() - before) / n


def _agt() -> tuple[Any, Any, Any]:
    # AGT 4.1.0 ships ``agentmesh`` inside agent-governance-toolkit-core, yet the package's
    # __init__ still warns "agentmesh-platform is deprecated"; the warning is not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        governance = importlib.import_module("agentmesh.governance")
        backends = importlib.import_module("agentmesh.governance.audit_backends")
    return governance, backends, importlib.metadata.version("agent-governance-toolkit")


def main() -> int:
    governance, backends, agt_version = _agt()
    print(
        f"peers: cra-agents {cra.__version__} vs agent-governance-toolkit {agt_version}, "
        f"Python {sys.version.split()[0]}, {load_average()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cra.configure(atlases=[ATLAS], store=f"jsonl://{tmp}/trace", durability="async")
        guarded = cra.guarded("github.file.read")(read_file_contents)
        toy = ToyGuard(f"{tmp}/toy.jsonl", {"github.file.read"})
        toy_guarded = toy.guard("github.file.read")(read_file_contents)

        policy = _policy(0)
        agt_mem = governance.govern(agt_tool, policy=policy)
        agt_deny = governance.govern(agt_tool, policy=policy)
        agt_50 = governance.govern(agt_tool, policy=_policy(48))
        rules_50 = len(agt_50.engine.get_policy("github-ops").rules)

        # GovernanceConfig.audit_file: documented, ignored by GovernedCallable in 4.1.0.
        ignored = f"{tmp}/agt-config-audit.jsonl"
        config = governance.GovernanceConfig(policy=policy, audit_file=ignored)
        governance.GovernedCallable(agt_tool, config)(action="github.file.read", repo="a", path="R")
        audit_file_written = os.path.exists(ignored)

        # (b): GovernedCallable.__call__'s steps with AuditLog(sink=FileAuditSink(...)).
        agt_engine = governance.govern(agt_tool, policy=policy, audit=False).engine
        sink = backends.FileAuditSink(f"{tmp}/agt-audit.jsonl", secret_key=b"k" * 32)
        file_log = governance.AuditLog(sink=sink)

        def agt_file(action: str, repo: str, path: str) -> str:
            context = {"action": {"type": action}, "repo": {"value": repo}, "path": {"value": path}}
            started = time.monotonic()
            decision = agt_engine.evaluate("*", context)
            eval_ms = (time.monotonic() - started) * 1000
            file_log.log(
                event_type="policy_evaluation",
                agent_did="*",
                action=action,
                outcome=decision.action,
                policy_decision=decision.action,
                data={
                    "rule": decision.matched_rule or "",
                    "reason": decision.reason or "",
                    "evaluation_ms": round(eval_ms, 3),
                },
            )
            if not decision.allowed:
                raise governance.GovernanceDenied(decision)
            return agt_tool(action, repo, path)

        def agt_denied() -> None:
            with contextlib.suppress(governance.GovernanceDenied):
                agt_deny(action="github.repo.delete", repo="a/b", path="R")

        rows: dict[str, Callable[[], object]] = {
            "plain function": lambda: read_file_contents("a/b", "R"),
            "@cra.guarded, allowed (jsonl, async)": lambda: guarded("a/b", "R"),
            "reference toy guard (JSONL chain)": lambda: toy_guarded("a/b", "R"),
            "AGT govern(), audit in memory": lambda: agt_mem(
                action="github.file.read", repo="a/b", path="R"
            ),
            "AGT engine + FileAuditSink (b)": lambda: agt_file("github.file.read", "a/b", "R"),
            "AGT govern(), denied": agt_denied,
            f"AGT govern(), {rules_50} rules": lambda: agt_50(
                action="github.file.read", repo="a/b", path="R"
            ),
        }
        # Sanity: each row does what its name says.
        assert guarded("a/b", "R") == "R"  # noqa: S101
        assert agt_mem(action="github.file.read", repo="a/b", path="R") == "R"  # noqa: S101
        assert agt_file("github.file.read", "a/b", "R") == "R"  # noqa: S101
        assert agt_50(action="github.file.read", repo="a/b", path="R") == "R"  # noqa: S101
        with contextlib.suppress(governance.GovernanceDenied):
            agt_deny(action="github.repo.delete", repo="a/b", path="R")
            raise AssertionError("the AGT deny row was allowed")

        with cra.session(agent_id="bench-bot", goal="peers benchmark"):
            per_rep = interleave({name: static(call) for name, call in rows.items()}, CALLS, REPS)

            sustained = {
                name: _sustained(rows[name])
                for name in (
                    "@cra.guarded, allowed (jsonl, async)",
                    "reference toy guard (JSONL chain)",
                    "AGT govern(), audit in memory",
                )
            }
            rss = {
                name: _rss_per_call(rows[name])
                for name in (
                    "@cra.guarded, allowed (jsonl, async)",
                    "reference toy guard (JSONL chain)",
                    "AGT govern(), audit in memory",
                    "AGT engine + FileAuditSink (b)",
                )
            }
        cra.shutdown()
        toy.close()
        agt_file_lines = len(Path(f"{tmp}/agt-audit.jsonl").read_bytes().splitlines())

    ours = "@cra.guarded, allowed (jsonl, async)"
    toy_name = "reference toy guard (JSONL chain)"
    med = {name: per_rep.median(name) for name in rows}
    print(
        f"{REPS} interleaved reps x {CALLS:,} calls (order alternates); "
        "each cell is the median over the reps"
    )
    print(
        f"{'call':38} {'median µs':>10} {'p99 µs':>9} {'mean µs':>9} "
        f"{'÷ cra':>7} {'÷ toy':>7}  per-rep medians µs"
    )
    for name, timings in per_rep.reps.items():
        p99 = per_rep.median(name, "p99")
        mean = per_rep.median(name, "mean")
        reps = " / ".join(f"{t.median:.2f}" for t in timings)
        print(
            f"{name:38} {med[name]:>10.2f} {p99:>9.2f} {mean:>9.2f} "
            f"{med[name] / med[ours]:>6.2f}x {med[name] / med[toy_name]:>6.2f}x  {reps}"
        )
    print(f"sustained, {SUSTAIN_S:.0f} s back to back:")
    for name, rate in sustained.items():
        print(f"  {name:36} {rate:>10,.0f} calls/s")
    print(f"RSS growth over {CALLS:,} more calls (after the runs above):")
    for name, grown in rss.items():
        print(f"  {name:36} {grown:>+10,.1f} bytes/call")
    print(
        f"notes: GovernanceConfig(audit_file=...) wrote a file: {audit_file_written}; "
        f"FileAuditSink lines written by row (b): {agt_file_lines:,}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
