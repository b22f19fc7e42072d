"""`make demo`: load the github-ops atlas, resolve three goals, print the decisions."""

from __future__ import annotations

import sys
import textwrap

import cra_agents as cra
from cra_agents.examples import atlas_path

ATLAS = atlas_path("github-ops")
GOALS: list[tuple[str, str, cra.protocol.RiskTier, list[str]]] = [
    ("triage-bot", "Triage new bug reports and label them", "low", []),
    ("release-bot", "Publish the 2.4.0 release with a changelog", "high", []),
    (
        "maintainer-assistant",
        "Review and merge the open pull requests",
        "medium",
        ["pulls.read", "pulls.write"],
    ),
]


def _rule(width: int = 100) -> str:
    return "─" * width


def _table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def main() -> int:
    runtime = cra.Runtime(atlases=[ATLAS])
    atlas = runtime.atlases[0]
    print(
        f"Loaded {atlas.atlas_id} {atlas.version} ({len(atlas.actions)} actions, "
        f"{len(atlas.manifest.policies)} policies) digest {atlas.digest[:23]}…"
    )
    for agent, goal, risk, capabilities in GOALS:
        session = runtime.create_session(agent, goal)
        resolution = runtime.resolve(
            cra.resolve_request(session, risk_tier=risk, required_capabilities=capabilities)
        )
        print()
        print(_rule())
        print(f"agent {agent!r}  risk {risk}  goal: {goal}")
        if capabilities:
            print(f"required capabilities: {', '.join(capabilities)}")
        decision = resolution.decision
        print(
            f"decision: {decision.type.upper()}"
            + (f" — {decision.reason}" if decision.reason else "")
        )
        rows: list[tuple[str, ...]] = [
            (
                a.action_id,
                "needs approval" if a.requires_confirmation else "allowed",
                a.risk_tier,
                f"{a.rate_limit.max_calls}/{a.rate_limit.window_seconds}s" if a.rate_limit else "",
            )
            for a in resolution.allowed_actions
        ]
        rows += [
            (d.action_id, "DENIED", "", f"{d.policy_id}: {d.reason}")
            for d in resolution.denied_actions
        ]
        print(textwrap.indent(_table(rows, ("action", "outcome", "risk", "limit / reason")), "  "))
        if resolution.context_blocks:
            print("context injected (priority order):")
            for block in resolution.context_blocks:
                print(
                    f"  [{block.priority:>4}] {block.block_id} — {block.name} "
                    f"(~{block.token_estimate} tokens)"
                )
        runtime.end_session(session.session_id)
        check = runtime.verify(session.session_id)
        print(
            f"trace: {check.event_count} events, chain {'VALID' if check.valid else 'INVALID'}, "
            f"head {check.last_valid_hash[:16]}…"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
