"""``cra trace verify|show|list|tail|replay|diff|export|report|keygen|checkpoint``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from cra_agents._exceptions import TraceError
from cra_agents.cli._output import CLIError, Output, Tree
from cra_agents.cli._output import esc as _esc
from cra_agents.cli._sources import (
    Source,
    StoreRef,
    iter_targets,
    load_checkpoint_set,
    load_checkpoints,
    read_file,
    resolve_target,
)
from cra_agents.protocol import events as ev
from cra_agents.trace import TornTail, stored_events

__all__ = [
    "checkpoint",
    "diff",
    "export",
    "keygen",
    "list_sessions",
    "replay",
    "report",
    "show",
    "tail",
    "verify",
]


def _short(value: str | None, n: int = 12) -> str:
    return "" if not value else value if len(value) <= n else value[:n] + "…"


# -- verify -------------------------------------------------------------------------------------


def _read_logs(
    sources: list[Source], advance: Callable[[int], None]
) -> Iterator[tuple[str | None, Any]]:
    """Each source as ``verify_logs`` takes it: (the id a store keeps it under, its items)."""
    for source in sources:
        items: Any
        if source.items is not None:  # a file: its events name their session themselves
            items = source.items
        elif source.store is not None and source.session_id is not None:
            # Streamed where the store can; an index that disagrees is reported for this
            # session, and the others are still verified.
            items = stored_events(source.store.open(), source.session_id)
        else:  # pragma: no cover - a source is a file or a stored session
            items = ValueError(f"{source.label}: nothing to read")
        advance(1)
        yield (source.session_id if source.store is not None else None), items


def verify(args: argparse.Namespace, out: Output) -> int:
    """Verify chains (and checkpoints, and exported span links); exit 1 when any is invalid.

    With ``--checkpoint``, the checkpoints vouch for every log they name: each of those logs
    must be among the ones verified and whole up to its checkpoint, else it is ``truncated``.
    """
    from cra_agents.trace import verify_logs

    store = StoreRef(args.store)
    results: list[dict[str, Any]] = []
    rows = []
    failed = False
    sources = (
        list(iter_targets(args.targets, args.all, store))
        if args.targets or args.all or not args.from_otlp
        else []
    )
    checkpoints, key = load_checkpoint_set(args.checkpoint, args.pubkey) if sources else ([], None)
    covered = {c.log_id for c in checkpoints}
    with out.progress("verifying", len(sources)) as advance:
        verdicts = verify_logs(
            _read_logs(sources, advance), checkpoints=checkpoints, verify_key=key
        )
    for index, result in enumerate(verdicts):
        label = sources[index].label if index < len(sources) else str(result.log_id)
        empty = result.valid and result.event_count == 0
        failed = failed or not result.valid or empty
        entry = {"target": label, **result.as_dict()}
        if index >= len(sources):
            entry["missing"] = True
        if empty:
            entry.update(valid=False, error_type="empty_trace", error_message="no events")
        unchecked = bool(checkpoints) and result.log_id not in covered
        if unchecked:
            entry["checkpoint"] = "missing"
        results.append(entry)
        if empty:
            where = "no events: an empty trace proves nothing"
        elif not result.valid:
            at = (
                f"event {result.first_invalid_index}: "
                if result.first_invalid_index is not None
                else ""
            )
            where = f"{at}{result.error_type}: {result.error_message}"
        else:
            where = f"head {_short(result.last_valid_hash, 16)}"
        tail = ""
        if result.checkpoint_size is not None and result.valid:
            tail = (
                f"checkpoint at {result.checkpoint_size}, "
                f"{result.unverifiable_tail} events after it"
            )
        elif unchecked:
            tail = "no checkpoint for this session"
        ok = result.valid and not empty
        rows.append(
            (
                _esc(label),
                out.styled("valid" if ok else "invalid", "VALID" if ok else "INVALID"),
                str(result.event_count),
                _esc(where),
                _esc(result.hash_rule or ""),
                _esc(tail),
            )
        )
    spans_report: dict[str, Any] | None = None
    if args.from_otlp:
        from cra_agents.otel import read_otlp_json, verify_spans

        if not Path(args.from_otlp).is_file():
            raise CLIError(
                "otlp_not_found",
                f"there is no OTLP/JSON file {args.from_otlp}",
                "pass the file the collector's file exporter wrote "
                "(see integrations/otel-collector)",
            )
        from cra_agents._exceptions import InvalidRequestError

        try:
            spans = read_otlp_json(args.from_otlp)
        except InvalidRequestError as exc:
            raise CLIError(
                "not_otlp_json",
                str(exc),
                "export spans as OTLP/JSON (the collector's file exporter, or "
                "'cra trace export --format otlp')",
            ) from exc
        checked = verify_spans(spans, store.open())
        failed = failed or not checked.valid
        spans_report = checked.as_dict()
        rows.append(
            (
                _esc(args.from_otlp),
                out.styled(
                    "valid" if checked.valid else "invalid", "VALID" if checked.valid else "INVALID"
                ),
                f"{len(spans)} spans",
                _esc(
                    f"{checked.checked_links} links checked against the store"
                    if checked.valid
                    else "; ".join(
                        f"{p.problem} at {p.session_id[:13]}#{p.sequence}: {p.detail}"
                        for p in checked.problems[:3]
                    )
                    or "a chain the spans point into does not verify"
                ),
                "",
                "",
            )
        )
    if out.json_mode:
        document: dict[str, Any] = {"valid": not failed, "traces": results}
        if spans_report is not None:
            document["spans"] = spans_report
        out.json(document)
    else:
        out.print(
            out.table(
                ["trace", "status", "events", "detail", "hash rule", "checkpoint"],
                rows,
                markup=True,
            )
        )
        if not rows:
            out.line("no sessions in the store")
    return 1 if failed else 0


# -- show ---------------------------------------------------------------------------------------


def _call_line(call: Any, out: Output) -> str:
    decision = call.decision
    parts = [f"[bold]{_esc(call.action_id)}[/]"]
    if decision == "approved":
        who = f" by {_esc(call.approver)}" if call.approver else ""
        parts.append(out.styled("approved", f"approved{who}"))
    else:
        parts.append(out.styled(decision, decision.upper() if decision == "denied" else decision))
    if call.policy_id:
        parts.append(f"[dim]{_esc(call.policy_id)}[/]")
    if call.reason and decision in ("denied", "approved"):
        parts.append(f"— {_esc(call.reason)}")
    if call.approval_requested_at is not None:
        # A person was asked outside the call (a LangGraph interrupt): who, what, how long.
        if decision == "pending":
            parts.append(f"[dim]waiting for a person since {_esc(call.approval_requested_at)}[/]")
        else:
            if decision == "denied" and call.approver:
                parts.append(f"by {_esc(call.approver)}")
            if call.edited:
                parts.append("(arguments edited)")
            if call.approval_wait_ms is not None:
                parts.append(f"[dim]after {call.approval_wait_ms / 1000:.1f} s[/]")
        if call.approval_reason:
            parts.append(f"«{_esc(call.approval_reason)}»")
    if call.outcome:
        duration = f" {call.duration_ms:g} ms" if call.duration_ms is not None else ""
        parts.append("→ " + out.styled(call.outcome, f"{call.outcome}{duration}"))
        if call.outcome == "failed" and call.error_code:
            parts.append(_esc(f"{call.error_code}: {call.error_message or ''}"))
    if call.shadow:
        parts.append("[magenta]shadow[/]")
    return f"[dim]#{call.sequence}[/] " + " ".join(parts)


def show(args: argparse.Namespace, out: Output) -> int:
    """A session as a tree: resolutions with their context, then each tool call."""
    from cra_agents.report import notable_calls, timeline
    from cra_agents.trace import verify_chain

    source = resolve_target(args.target, StoreRef(args.store))
    events = source.events()
    if not events:
        raise CLIError("empty_trace", f"{source.label} has no events", "check the session id")
    line = timeline(events)
    check = verify_chain(events)
    if out.json_mode:
        out.json({**line.as_dict(), "verification": check.as_dict()})
        return 0 if check.valid else 1
    duration = ""
    if line.ended_at and line.duration_ms is not None:
        duration = f", {line.duration_ms:.0f} ms, {line.end_reason or 'ended'}"
    elif not line.ended_at:
        duration = ", still open"
    status = (
        out.styled("valid", "chain VALID")
        if check.valid
        else out.styled("invalid", f"chain INVALID at event {check.first_invalid_index}")
    )
    root = Tree(
        f"[bold]session {_esc(line.session_id)}[/]  {_esc(line.agent_id)} — "
        f"{_esc(line.goal)}  [dim]{len(events)} events{_esc(duration)}[/]  {status}"
    )
    for resolution in line.resolutions:
        node = root.add(
            f"resolution [dim]{_esc(_short(str(resolution.get('resolution_id') or ''), 13))}[/] "
            + out.styled(str(resolution.get("decision_type") or "pending"))
            + (f" — {_esc(resolution['goal'])}" if resolution.get("goal") else "")
        )
        for block in line.context_blocks:
            if block.get("resolution_id") == resolution.get("resolution_id"):
                tokens = block.get("token_count")
                node.add(
                    f"[cyan]context[/] {_esc(block.get('block_id'))}"
                    + (f" [dim](~{tokens:g} tokens)[/]" if isinstance(tokens, int | float) else "")
                )
    calls = notable_calls(line.calls, args.max_calls)
    for call in calls:
        root.add(_call_line(call, out))
    if len(calls) < len(line.calls):
        root.add(
            f"[dim]… {len(line.calls) - len(calls):,} allowed calls not shown "
            "(--max-calls 0 shows all)[/]"
        )
    if not line.calls and not line.resolutions:
        root.add("[dim]no decisions recorded[/]")
    out.print(root)
    counts: dict[str, int] = {}
    for call in line.calls:
        counts[call.decision] = counts.get(call.decision, 0) + 1
    if counts:
        out.line(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0 if check.valid else 1


# -- list ---------------------------------------------------------------------------------------


def list_sessions(args: argparse.Namespace, out: Output) -> int:
    """The store's sessions, newest last."""
    store = StoreRef(args.store)
    sessions = store.sessions()
    shown = sessions if args.limit <= 0 else sessions[-args.limit :]
    rows: list[dict[str, Any]] = []
    unreadable = 0
    for session_id in shown:
        try:
            events = store.read(session_id)
        except CLIError as exc:  # one bad session must not hide the whole store
            unreadable += 1
            out.warn(exc.message)
            rows.append(
                {
                    "session_id": session_id,
                    "agent_id": None,
                    "goal": None,
                    "started_at": None,
                    "events": None,
                    "ended": None,
                    "error": exc.code,
                }
            )
            continue
        first = events[0] if events else None
        last = events[-1] if events else None
        payload = first.payload if first is not None else {}
        rows.append(
            {
                "session_id": session_id,
                "agent_id": payload.get("agent_id"),
                "goal": payload.get("goal"),
                "started_at": first.timestamp if first else None,
                "events": len(events),
                "ended": bool(last and last.event_type == ev.SESSION_ENDED),
            }
        )
    if out.json_mode:
        out.json(
            {
                "store": store.label,
                "total": len(sessions),
                "unreadable": unreadable,
                "sessions": rows,
            }
        )
        return 1 if unreadable else 0
    out.print(
        out.table(
            ["session", "agent", "goal", "started", "events", "ended"],
            [
                (
                    r["session_id"],
                    r["agent_id"],
                    _short(str(r["goal"] or ""), 40),
                    r["started_at"],
                    r["events"],
                    "unreadable" if r.get("error") else "yes" if r["ended"] else "open",
                )
                for r in rows
            ],
            title=f"{store.label}: {len(sessions)} sessions"
            + (f", the last {len(shown)}" if len(shown) < len(sessions) else ""),
        )
    )
    return 1 if unreadable else 0


# -- tail ---------------------------------------------------------------------------------------


def _summary(event: Mapping[str, Any]) -> str:
    payload = event.get("payload") or {}
    keys = ("action_id", "policy_id", "result", "reason", "approver", "error_code", "goal")
    parts = [f"{k}={payload[k]}" for k in keys if payload.get(k) not in (None, "")]
    return " ".join(parts)


def _print_event(event: Mapping[str, Any], out: Output) -> None:
    if out.json_mode:
        out.stdout.write(orjson.dumps(event).decode() + "\n")
        out.stdout.flush()
        return
    kind = str(event["event_type"])
    word = kind.rsplit(".", 1)[-1]
    out.print(
        f"[dim]{_esc(event['timestamp'])}[/] {_esc(str(event['session_id'])[:13])} "
        f"{event['sequence']:>5} {out.styled(word, kind)} {_esc(_summary(event))}"
    )


def tail(args: argparse.Namespace, out: Output) -> int:
    """The latest events (``--json``: one event per line); ``-f`` keeps following."""
    store = StoreRef(args.store)
    types = set(args.types or [])

    def wanted(event: Mapping[str, Any]) -> bool:
        return not types or event["event_type"] in types

    source: Source | None = None
    seen: dict[str, int] = {}
    bad: set[str] = set()  # sessions whose events cannot be read: warned about once
    offset = 0
    if args.target and "#" not in args.target and Path(args.target).is_file():
        path = Path(args.target)  # a file, whatever sessions it holds
        source = Source(str(path), None, path=path)
        items = [i for part in read_file(path) for i in part.items or []]
        for number, item in enumerate(items, 1):
            if isinstance(item, BaseException) and not isinstance(item, TornTail):
                raise CLIError(
                    "bad_trace_file",
                    f"{path}: event {number} cannot be read: {item}",
                    f"run 'cra trace verify {path}' to locate the damage",
                )
        events = [i for i in items if isinstance(i, dict)]
        with path.open("rb") as reader:  # follow from the end of the last complete line
            data = reader.read()
        offset = data.rfind(b"\n") + 1
    elif args.target:
        source = resolve_target(args.target, store)
        events = source.events()
    else:
        events = []
        for session_id in reversed(store.sessions()):
            events[:0] = [e.model_dump(mode="json") for e in _readable(store, session_id, out, bad)]
            if len([e for e in events if wanted(e)]) >= args.lines:
                break
        events.sort(key=lambda e: (e["timestamp"], e["sequence"]))
    for event in events:
        seen[str(event["session_id"])] = max(
            seen.get(str(event["session_id"]), -1), int(event["sequence"])
        )
    for event in [e for e in events if wanted(e)][-args.lines :] if args.lines > 0 else []:
        _print_event(event, out)
    if not args.follow:
        return 0
    if source is None:  # follow every session: only what is written from now on
        for session_id in store.sessions():
            if session_id in seen or session_id in bad:
                continue
            try:
                seen[session_id] = _last_sequence(store, session_id)
            except (TraceError, ValueError) as exc:  # unreadable: warned once, then skipped
                bad.add(session_id)
                out.warn(f"the stored events of session {session_id!r} cannot be read: {exc}")
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(args.interval)
            if source is not None and source.path is not None:
                offset = _follow_file(source.path, offset, wanted, out)
                continue
            ids = [source.session_id] if source is not None and source.session_id else None
            for session_id in ids or store.sessions():
                fresh = _readable(store, session_id, out, bad, seen.get(session_id, -1))
                for item in fresh:
                    seen[session_id] = item.sequence
                    event = item.model_dump(mode="json")
                    if wanted(event):
                        _print_event(event, out)
    except KeyboardInterrupt:
        return 0
    return 0


def _readable(
    store: StoreRef,
    session_id: str,
    out: Output,
    bad: set[str],
    since_sequence: int | None = None,
) -> list[Any]:
    """A session's events; none when they cannot be read (warned once, then in ``bad``)."""
    if session_id in bad:
        return []
    try:
        return store.read(session_id, since_sequence)
    except CLIError as exc:
        bad.add(session_id)
        out.warn(exc.message)
        return []


def _last_sequence(store: StoreRef, session_id: str) -> int:
    opened = store.open()
    last = getattr(opened, "last_sequence", None)
    if last is not None:
        value: int = last(session_id)
        return value
    events = opened.read(session_id)  # pragma: no cover - stores without last_sequence
    return events[-1].sequence if events else -1  # pragma: no cover


def _follow_file(
    path: Path, offset: int, wanted: Callable[[Mapping[str, Any]], bool], out: Output
) -> int:
    size = path.stat().st_size
    if size < offset:  # truncated or replaced: start over
        offset = 0
    if size == offset:
        return offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size - offset)
    complete = data.rfind(b"\n") + 1
    for line in data[:complete].splitlines():
        if line.strip():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                out.warn(f"{path}: skipped a line that is not JSON")
                continue
            if wanted(event):
                _print_event(event, out)
    return offset + complete


# -- replay -------------------------------------------------------------------------------------


def _pair(value: tuple[str, str | None] | None) -> str:
    if value is None:
        return "—"
    result, policy = value
    return f"{result} ({policy})" if policy else result


def replay(args: argparse.Namespace, out: Output) -> int:
    """Re-decide a session against candidate atlases and list what would change."""
    from cra_agents.replay import replay_session

    for path in args.atlas:
        if "://" not in path and not Path(path).exists():
            raise CLIError(
                "atlas_not_found",
                f"there is no atlas at {path}",
                "pass the candidate atlas directory or manifest to --atlas",
            )
    source = resolve_target(args.target, StoreRef(args.store))
    events = source.events()
    with out.progress("replaying", len(events)) as advance:
        try:
            result = replay_session(
                events, args.atlas, default_deny=args.default_deny, progress=advance
            )
        except ValueError as exc:
            raise CLIError(
                "trace_invalid",
                f"{source.label} cannot be replayed: {exc}",
                f"run 'cra trace verify {args.target}'; only verified, whole sessions replay",
                exit_code=1,
            ) from exc
    changed = result.changed
    if out.json_mode:
        out.json({"target": source.label, "atlases": args.atlas, **result.as_dict()})
    else:
        out.line(
            f"{len(result.decisions)} decisions replayed against {', '.join(args.atlas)}: "
            f"{len(changed)} would change, {len(result.skipped)} skipped (runtime rules)"
        )
        if changed:
            out.print(
                out.table(
                    ["seq", "kind", "action", "recorded", "candidate", "note"],
                    [
                        (
                            str(d.sequence),
                            d.kind,
                            _esc(d.action_id or ""),
                            out.styled(d.before[0] if d.before else "", _pair(d.before)),
                            out.styled(d.after[0] if d.after else "", _pair(d.after)),
                            _esc(d.note),
                        )
                        for d in changed
                    ],
                    markup=True,
                    title="decisions that would change",
                )
            )
        else:
            out.print(out.styled("valid", "no decision would change"))
    return 1 if changed and args.fail_on_change else 0


# -- diff ---------------------------------------------------------------------------------------


def diff(args: argparse.Namespace, out: Output) -> int:
    """Compare two traces; exit 1 when they differ in more than timings."""
    from cra_agents.replay import diff_traces

    store = StoreRef(args.store)
    first = resolve_target(args.first, store)
    second = resolve_target(args.second, store)
    result = diff_traces(first.events(), second.events())
    verdict = result.compatibility
    if out.json_mode:
        out.json({"first": first.label, "second": second.label, **result.as_dict()})
    else:
        style = {"identical": "valid", "semantically_equivalent": "warn", "different": "invalid"}
        out.print(
            f"{out.styled(style[verdict], verdict.replace('_', ' ').upper())}  "
            f"{_esc(first.label)} ↔ {_esc(second.label)}  "
            f"[dim]({len(result.differences)} differences)[/]"
        )
        if result.differences:
            out.print(
                out.table(
                    ["path", "change", "significance", "A", "B"],
                    [
                        (
                            d.path,
                            d.type,
                            d.significance,
                            _short(_json_text(d.before), 60),
                            _short(_json_text(d.after), 60),
                        )
                        for d in result.differences
                    ],
                )
            )
    return 1 if verdict == "different" else 0


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# -- export -------------------------------------------------------------------------------------


def export(args: argparse.Namespace, out: Output) -> int:
    """Sessions as JSONL events or one OTLP/JSON document, to a file or stdout."""
    store = StoreRef(args.store)
    sources = list(iter_targets(args.targets, args.all, store))
    sessions: list[list[dict[str, Any]]] = []  # one list per session (files split by session)
    with out.progress("reading", len(sources)) as advance:
        for source in sources:
            sessions.append(source.events())
            advance(1)
    if args.format == "otlp":
        from cra_agents.otel import otlp_json

        data = orjson.dumps(otlp_json(sessions, service_name=args.service_name)) + b"\n"
    else:
        data = b"".join(orjson.dumps(e) + b"\n" for events in sessions for e in events)
    count = sum(len(s) for s in sessions)
    if args.output:
        target = Path(args.output)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        if out.json_mode:
            out.json(
                {
                    "output": str(target),
                    "format": args.format,
                    "sessions": len(sessions),
                    "events": count,
                }
            )
        else:
            out.line(
                f"wrote {len(sessions)} sessions ({count} events) as {args.format} to {target}"
            )
        return 0
    stream: IO[bytes] = getattr(out.stdout, "buffer", None) or sys.stdout.buffer
    out.stdout.flush()
    stream.write(data)
    stream.flush()
    return 0


# -- report -------------------------------------------------------------------------------------


def report(args: argparse.Namespace, out: Output) -> int:
    """Write the self-contained HTML report of one session."""
    from cra_agents.report import write_report
    from cra_agents.trace import verify_chain

    source = resolve_target(args.target, StoreRef(args.store))
    events = source.events()
    if not events:
        raise CLIError("empty_trace", f"{source.label} has no events", "check the session id")
    checkpoints, key = load_checkpoints(args.checkpoint, args.pubkey, source.log_id)
    verification = verify_chain(events, checkpoints=checkpoints, verify_key=key)
    latest = max(checkpoints, key=lambda c: c.size) if checkpoints else None
    session_id = str(events[0]["session_id"])
    target = Path(args.output or f"report-{session_id[:13]}.html")
    written = write_report(
        events, target, verification=verification, checkpoint=latest, title=args.title
    )
    if out.json_mode:
        out.json(
            {
                "output": str(written),
                "session_id": session_id,
                "events": len(events),
                "verification": verification.as_dict(),
            }
        )
    else:
        status = "chain VALID" if verification.valid else "chain INVALID"
        out.print(
            f"wrote {_esc(str(written))} [dim]({len(events)} events, {status}; one file, "
            "opens offline in any browser)[/]"
        )
    return 0 if verification.valid else 1


# -- keys and checkpoints -----------------------------------------------------------------------


def keygen(args: argparse.Namespace, out: Output) -> int:
    """Write an Ed25519 key pair for signing checkpoints."""
    from cra_agents.trace import generate_signing_key, key_id, save_signing_key, save_verify_key

    private, public = Path(f"{args.prefix}.key"), Path(f"{args.prefix}.pub")
    for path in (private, public):
        if path.exists() and not args.force:
            raise CLIError(
                "exists",
                f"{path} already exists",
                "choose another PREFIX, or pass --force to replace the key (old checkpoints "
                "then need the old public key)",
            )
    password = os.environ.get("CRA_CHECKPOINT_KEY_PASSWORD")
    key = generate_signing_key()
    private.parent.mkdir(parents=True, exist_ok=True)
    save_signing_key(key, private, password=password.encode() if password else None)
    save_verify_key(key.public_key(), public)
    kid = key_id(key.public_key())
    if out.json_mode:
        out.json({"private_key": str(private), "public_key": str(public), "key_id": kid})
    else:
        out.line(f"wrote {private} (keep it away from the trace store) and {public}; key id {kid}")
    return 0


def checkpoint(args: argparse.Namespace, out: Output) -> int:
    """Verify a session, then sign and store a checkpoint of it."""
    from cra_agents.trace import append_checkpoint, load_signing_key, sign_checkpoint, verify_chain

    source = resolve_target(args.target, StoreRef(args.store))
    events = source.events()
    if not events:
        raise CLIError(
            "empty_trace",
            f"{source.label} has no events: there is nothing to vouch for",
            "checkpoint a session that has recorded events",
        )
    check = verify_chain(events)
    if not check.valid:
        raise CLIError(
            "trace_invalid",
            f"{source.label} does not verify ({check.error_type} at event "
            f"{check.first_invalid_index}); a checkpoint would vouch for a damaged log",
            f"investigate with 'cra trace verify {args.target}' first",
            exit_code=1,
        )
    password = os.environ.get("CRA_CHECKPOINT_KEY_PASSWORD")
    try:
        key = load_signing_key(args.key, password=password.encode() if password else None)
    except (ValueError, OSError) as exc:
        raise CLIError(
            "bad_key",
            f"cannot read the signing key {args.key}: {exc}",
            "pass the PREFIX.key written by 'cra trace keygen' (set CRA_CHECKPOINT_KEY_PASSWORD "
            "if it is encrypted)",
        ) from exc
    signed = sign_checkpoint(events, key)  # signed for the session id the events carry
    path = append_checkpoint(signed, args.output)
    if out.json_mode:
        out.json({"checkpoint": signed.as_dict(), "file": str(path)})
    else:
        out.line(
            f"signed checkpoint of {signed.log_id} at size {signed.size}, head "
            f"{signed.head_hash[:16]}…, appended to {path}"
        )
    return 0
