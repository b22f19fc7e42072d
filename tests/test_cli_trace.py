"""``cra trace …`` on real stores: verify, show, list, tail, replay, diff, export, report, keys."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import cra_agents as cra
from cra_agents.cli import main
from cra_agents.otel import otlp_json, read_otlp_json, verify_spans


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def record_session(runtime: cra.Runtime, agent: str = "triage-bot") -> str:
    """One session with a resolution and four calls: allowed, denied, approved + failed."""
    session = runtime.create_session(agent, "Triage new issues and merge the fix")
    runtime.resolve(cra.resolve_request(session, risk_tier="medium"))
    sid = session.session_id
    allowed = runtime.authorize(sid, "github.issue.create", {"repo": "acme/app", "title": "Bug"})
    runtime.record_outcome(allowed, result={"number": 7})
    with pytest.raises(cra.ActionDenied):
        runtime.authorize(
            sid, "github.repo.delete", {"repo": "acme/app", "confirm_name": "acme/app"}
        )
    merge = runtime.authorize(
        sid,
        "github.pr.merge",
        {"repo": "acme/app", "pr_number": 3, "expected_head_sha": "a" * 40},
        approval=cra.ApprovalDecision(approved=True, approver="alice", reason="reviewed"),
    )
    runtime.record_outcome(merge, error=RuntimeError("merge conflict"))
    runtime.end_session(sid)
    return sid


def unique_prefix(ids: list[str], which: int) -> str:
    """The shortest prefix of ``ids[which]`` no other id shares.

    Ids made in the same millisecond share their first 30 characters (timestamp, then the
    process's random part), so a fixed-length prefix can be ambiguous.
    """
    own = ids[which]
    for length in range(1, len(own) + 1):
        if not any(other.startswith(own[:length]) for i, other in enumerate(ids) if i != which):
            return own[:length]
    return own


@pytest.fixture
def store(tmp_path: Path, github_ops: Path) -> tuple[str, list[str]]:
    url = f"sqlite://{tmp_path}/traces.db"
    runtime = cra.Runtime(atlases=[github_ops], store=url)
    ids = [record_session(runtime), record_session(runtime, "release-bot")]
    runtime.close()
    return url, ids


@pytest.fixture
def jsonl(tmp_path: Path, github_ops: Path) -> Path:
    directory = tmp_path / "jsonl"
    runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{directory}")
    sid = record_session(runtime)
    runtime.close()
    return directory / f"{sid}.trace.jsonl"


# -- sources ------------------------------------------------------------------------------------


def test_session_by_id_prefix_last_and_file(capsys, store, jsonl):
    url, ids = store
    for target in (ids[0], unique_prefix(ids, 0), "last"):
        code, document = run_json(capsys, "trace", "verify", target, "--store", url)
        assert code == 0
        assert document["valid"] is True
    assert document["traces"][0]["target"] == ids[1]
    code, document = run_json(capsys, "trace", "verify", str(jsonl))
    assert code == 0
    assert document["traces"][0]["event_count"] == 33


def test_unknown_ambiguous_and_missing_sources(capsys, store, tmp_path):
    url, ids = store
    code, _, err = run(capsys, "trace", "show", "nope", "--store", url)
    assert code == 2
    assert "cra trace list" in err
    code, _, err = run(capsys, "trace", "show", ids[0][:4], "--store", url)
    assert code == 2
    assert "ambiguous_session" in err
    code, _, err = run(capsys, "trace", "show", "last", "--store", f"sqlite://{tmp_path}/x.db")
    assert code == 2
    assert "there is no trace store" in err
    code, _, err = run(capsys, "trace", "show", "missing.trace.jsonl")
    assert code == 2
    assert "there is no trace file" in err
    code, _, err = run(capsys, "trace", "show", "last", "--store", "memory://")
    assert code == 2
    assert "cannot be read from here" in err
    code, _, err = run(capsys, "trace", "verify", "--store", url)
    assert code == 2
    assert "--all" in err


def test_empty_store_has_no_last_session(capsys, tmp_path):
    runtime = cra.Runtime(store=f"sqlite://{tmp_path}/e.db")
    runtime.close()
    code, _, err = run(capsys, "trace", "show", "last", "--store", f"sqlite://{tmp_path}/e.db")
    assert code == 2
    assert "holds no sessions" in err


# -- verify -------------------------------------------------------------------------------------


def test_verify_all_and_a_tampered_copy(capsys, store, jsonl, tmp_path):
    url, _ = store
    code, out, _ = run(capsys, "trace", "verify", "--all", "--store", url)
    assert code == 0
    assert out.count("VALID") == 2
    tampered = tmp_path / "tampered.trace.jsonl"
    lines = jsonl.read_text().splitlines()
    event = json.loads(lines[9])
    event["payload"]["policy_id"] = "allow-everything"
    lines[9] = json.dumps(event)
    tampered.write_text("\n".join(lines) + "\n")
    code, out, _ = run(capsys, "trace", "verify", str(tampered))
    assert code == 1
    assert "INVALID" in out
    assert "event 9: hash_mismatch" in out
    code, document = run_json(capsys, "trace", "verify", str(jsonl), str(tampered))
    assert code == 1
    first, second = document["traces"]
    assert first["valid"] is True
    assert (second["first_invalid_index"], second["error_type"]) == (9, "hash_mismatch")


def test_verify_reports_a_torn_tail_not_tampering(capsys, jsonl, tmp_path):
    torn = tmp_path / "torn.trace.jsonl"
    torn.write_bytes(jsonl.read_bytes()[:-40])
    code, document = run_json(capsys, "trace", "verify", str(torn))
    assert code == 1
    assert document["traces"][0]["error_type"] == "torn_tail"


def test_keygen_checkpoint_and_truncation(capsys, jsonl, tmp_path):
    prefix = tmp_path / "keys" / "audit"
    code, document = run_json(capsys, "trace", "keygen", str(prefix))
    assert code == 0
    assert Path(document["private_key"]).stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, "trace", "keygen", str(prefix))
    assert code == 2
    assert "--force" in err
    checkpoints = tmp_path / "cps"
    code, document = run_json(
        capsys, "trace", "checkpoint", str(jsonl), "--key", f"{prefix}.key", "-o", str(checkpoints)
    )
    assert code == 0
    assert document["checkpoint"]["size"] == 33
    pub = f"{prefix}.pub"
    code, document = run_json(
        capsys, "trace", "verify", str(jsonl), "--checkpoint", str(checkpoints), "--pubkey", pub
    )
    assert code == 0
    assert document["traces"][0]["checkpoint_size"] == 33
    # Cut the last three events: the chain alone still verifies, the checkpoint does not.
    cut = tmp_path / "cut" / jsonl.name
    cut.parent.mkdir()
    cut.write_text("\n".join(jsonl.read_text().splitlines()[:-3]) + "\n")
    assert run(capsys, "trace", "verify", str(cut))[0] == 0
    code, out, _ = run(
        capsys, "trace", "verify", str(cut), "--checkpoint", str(checkpoints), "--pubkey", pub
    )
    assert code == 1
    assert "truncated" in out
    # A key that did not sign it.
    run(capsys, "trace", "keygen", str(tmp_path / "other"))
    code, document = run_json(
        capsys,
        "trace",
        "verify",
        str(jsonl),
        "--checkpoint",
        str(checkpoints),
        "--pubkey",
        str(tmp_path / "other.pub"),
    )
    assert code == 1
    assert document["traces"][0]["error_type"] == "checkpoint_invalid"


def test_checkpoint_option_errors(capsys, jsonl, tmp_path):
    code, _, err = run(capsys, "trace", "verify", str(jsonl), "--pubkey", "k.pub")
    assert code == 2
    assert "go together" in err
    (tmp_path / "k.pub").write_text("not a key")
    code, _, err = run(
        capsys,
        "trace",
        "verify",
        str(jsonl),
        "--checkpoint",
        "x",
        "--pubkey",
        str(tmp_path / "k.pub"),
    )
    assert code == 2
    assert "cra trace keygen" in err
    run(capsys, "trace", "keygen", str(tmp_path / "real"))
    empty = tmp_path / "none"
    empty.mkdir()
    code, _, err = run(
        capsys,
        "trace",
        "verify",
        str(jsonl),
        "--checkpoint",
        str(empty),
        "--pubkey",
        str(tmp_path / "real.pub"),
    )
    assert code == 2
    assert "cra trace checkpoint" in err
    bad = tmp_path / "bad.checkpoints.jsonl"
    bad.write_text('{"size": 1}\n')
    code, _, err = run(
        capsys,
        "trace",
        "verify",
        str(jsonl),
        "--checkpoint",
        str(bad),
        "--pubkey",
        str(tmp_path / "real.pub"),
    )
    assert code == 2
    assert "bad_checkpoint" in err
    code, _, err = run(capsys, "trace", "checkpoint", str(jsonl), "--key", str(tmp_path / "k.pub"))
    assert code == 2
    assert "bad_key" in err


def test_checkpoint_refuses_an_invalid_chain(capsys, jsonl, tmp_path):
    run(capsys, "trace", "keygen", str(tmp_path / "k"))
    tampered = tmp_path / "t.trace.jsonl"
    tampered.write_text(jsonl.read_text().replace("triage-bot", "evil-bot", 1))
    code, _, err = run(
        capsys, "trace", "checkpoint", str(tampered), "--key", str(tmp_path / "k.key")
    )
    assert code == 1
    assert "hash_mismatch" in err


# -- show, list, tail ---------------------------------------------------------------------------


def test_show_tree(capsys, store):
    url, ids = store
    code, out, _ = run(capsys, "trace", "show", ids[0], "--store", url)
    assert code == 0
    assert "chain VALID" in out
    assert "github.issue.create" in out
    assert "DENIED" in out
    assert "Deleting repositories is never automated" in out
    assert "approved by alice" in out
    assert "failed" in out
    assert "merge conflict" in out
    assert "context" in out
    code, document = run_json(capsys, "trace", "show", ids[0], "--store", url)
    assert document["verification"]["valid"] is True
    decisions = [c["decision"] for c in document["calls"]]
    assert decisions == ["allowed", "denied", "approved"]


def test_show_of_a_tampered_file_exits_1(capsys, jsonl, tmp_path):
    tampered = tmp_path / "t.trace.jsonl"
    tampered.write_text(jsonl.read_text().replace("acme", "evil", 0).replace("triage-bot", "x", 1))
    code, out, _ = run(capsys, "trace", "show", str(tampered))
    assert code == 1
    assert "chain INVALID at event 0" in out


def test_list(capsys, store):
    url, ids = store
    code, out, _ = run(capsys, "trace", "list", "--store", url)
    assert code == 0
    assert ids[0] in out
    assert "release-bot" in out
    code, document = run_json(capsys, "trace", "list", "--store", url, "-n", "1")
    assert document["total"] == 2
    assert [s["session_id"] for s in document["sessions"]] == [ids[1]]
    assert document["sessions"][0]["ended"] is True


def test_tail_filters_by_type(capsys, store):
    url, ids = store
    code, out, _ = run(capsys, "trace", "tail", "--store", url, "-n", "3")
    assert code == 0
    assert len(out.strip().splitlines()) == 3
    assert "session.ended" in out.splitlines()[-1]
    code, out, _ = run(
        capsys, "trace", "tail", ids[0], "--store", url, "--type", "action.denied", "--json"
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event_type"] for e in events] == ["action.denied"]
    assert events[0]["payload"]["policy_id"] == "deny-repo-delete"


def test_tail_follow_sees_new_events(capsys, tmp_path, github_ops):
    url = f"sqlite://{tmp_path}/live.db"
    runtime = cra.Runtime(atlases=[github_ops], store=url, durability="sync")
    first = runtime.create_session("bot", "first")
    runtime.end_session(first.session_id)

    def later() -> None:
        time.sleep(0.6)
        record_session(runtime, "late-bot")

    writer = threading.Thread(target=later)
    writer.start()
    code, out, _ = run(
        capsys,
        "trace",
        "tail",
        "-f",
        "--store",
        url,
        "--interval",
        "0.1",
        "--max-seconds",
        "3",
        "--type",
        "action.denied",
        "--type",
        "session.started",
        "--json",
    )
    writer.join()
    runtime.close()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event_type"] for e in events] == [
        "session.started",
        "session.started",
        "action.denied",
    ]
    assert events[1]["payload"]["agent_id"] == "late-bot"


def test_tail_follow_a_file(capsys, jsonl, tmp_path):
    live = tmp_path / "live.trace.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    live.write_bytes(b"".join(lines[:5]))

    def grow() -> None:
        time.sleep(0.4)
        with live.open("ab") as handle:
            handle.write(b"".join(lines[5:]))

    writer = threading.Thread(target=grow)
    writer.start()
    code, out, _ = run(
        capsys,
        "trace",
        "tail",
        str(live),
        "-f",
        "-n",
        "0",
        "--interval",
        "0.1",
        "--max-seconds",
        "1.5",
        "--json",
    )
    writer.join()
    assert code == 0
    sequences = [json.loads(line)["sequence"] for line in out.splitlines()]
    assert sequences == list(range(5, 33))


# -- replay and diff ----------------------------------------------------------------------------


def stricter(github_ops: Path, tmp_path: Path) -> Path:
    candidate = tmp_path / "candidate"
    shutil.copytree(github_ops, candidate)
    manifest = json.loads((candidate / "atlas.json").read_text())
    manifest["version"] = "1.3.0"
    manifest["policies"].append(
        {
            "policy_id": "freeze-issue-create",
            "type": "deny",
            "actions": ["github.issue.create"],
            "parameters": {"reason": "Issue creation is frozen"},
        }
    )
    (candidate / "atlas.json").write_text(json.dumps(manifest))
    return candidate


def test_replay_same_atlas_changes_nothing(capsys, store, github_ops):
    url, ids = store
    code, out, _ = run(
        capsys, "trace", "replay", ids[0], "--atlas", str(github_ops), "--store", url
    )
    assert code == 0
    assert "0 would change" in out
    assert "no decision would change" in out


def test_replay_against_a_stricter_candidate(capsys, store, github_ops, tmp_path):
    url, ids = store
    candidate = stricter(github_ops, tmp_path)
    argv = ["trace", "replay", ids[0], "--atlas", str(candidate), "--store", url]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "freeze-issue-create" in out
    code, document = run_json(capsys, *argv, "--fail-on-change")
    assert code == 1
    changed = {(d["kind"], d["action_id"]): d for d in document["changed"]}
    execute = changed[("execute", "github.issue.create")]
    assert execute["before"] == ["allow", "allow-issue-triage"]
    assert execute["after"] == ["deny", "freeze-issue-create"]


def test_replay_refuses_a_tampered_trace(capsys, jsonl, github_ops, tmp_path):
    tampered = tmp_path / "t.trace.jsonl"
    tampered.write_text(jsonl.read_text().replace("triage-bot", "x", 1))
    code, _, err = run(capsys, "trace", "replay", str(tampered), "--atlas", str(github_ops))
    assert code == 1
    assert "cra trace verify" in err
    code, _, err = run(capsys, "trace", "replay", str(jsonl), "--atlas", str(tmp_path / "no"))
    assert code == 2
    assert "candidate atlas" in err


def test_diff(capsys, store, tmp_path):
    url, ids = store
    copy = tmp_path / "copy.jsonl"
    run(capsys, "trace", "export", ids[0], "-o", str(copy), "--store", url)
    code, out, _ = run(capsys, "trace", "diff", ids[0], str(copy), "--store", url)
    assert code == 0
    assert "IDENTICAL" in out
    slower = tmp_path / "slower.jsonl"
    lines = [json.loads(line) for line in copy.read_text().splitlines()]
    executed = next(e for e in lines if e["event_type"] == "action.executed")
    executed["payload"]["duration_ms"] += 250  # timings differ, decisions do not
    slower.write_text("".join(json.dumps(e) + "\n" for e in lines))
    code, out, _ = run(capsys, "trace", "diff", str(copy), str(slower))
    assert code == 0
    assert "SEMANTICALLY EQUIVALENT" in out
    assert "minor" in out
    code, document = run_json(capsys, "trace", "diff", ids[0], ids[1], "--store", url)
    assert code == 1
    assert document["compatibility"] == "different"
    assert any("agent_id" in d["path"] for d in document["differences"])
    code, out, _ = run(capsys, "trace", "diff", ids[0], ids[1], "--store", url)
    assert "DIFFERENT" in out
    assert "release-bot" in out


# -- export -------------------------------------------------------------------------------------


def test_export_jsonl_round_trips(capsys, store, tmp_path):
    url, ids = store
    target = tmp_path / "out.jsonl"
    code, document = run_json(capsys, "trace", "export", ids[0], "-o", str(target), "--store", url)
    assert code == 0
    assert document["events"] == 33
    assert run(capsys, "trace", "verify", str(target))[0] == 0
    code, out, _ = run(capsys, "trace", "export", ids[0], "--store", url)
    assert out.encode() == target.read_bytes()


def test_export_otlp_verifies_against_the_store(capsys, store, tmp_path):
    url, _ = store
    target = tmp_path / "spans.json"
    code, _, _ = run(
        capsys, "trace", "export", "--all", "--format", "otlp", "-o", str(target), "--store", url
    )
    assert code == 0
    spans = read_otlp_json(target)
    assert len(spans) == 2 * (1 + 3)  # a session span and three tool calls per session
    names = sorted({s.name for s in spans})
    assert "execute_tool github.pr.merge" in names
    assert "invoke_agent triage-bot" in names
    denied = next(s for s in spans if s.name == "execute_tool github.repo.delete")
    assert denied.status_code == "ERROR"
    assert denied.attributes["cra.policy.id"] == "deny-repo-delete"
    merge = next(s for s in spans if s.name == "execute_tool github.pr.merge")
    assert merge.attributes["cra.approval.approver"] == "alice"
    assert merge.attributes["cra.outcome"] == "failed"
    roots = {s.span_id for s in spans if s.parent_span_id is None}
    assert all(s.parent_span_id in roots for s in spans if s.parent_span_id)
    code, document = run_json(capsys, "trace", "verify", "--from-otlp", str(target), "--store", url)
    assert code == 0
    assert document["spans"]["checked_links"] == 2 * (3 + 2)


def test_verify_from_otlp_catches_a_rewritten_store(capsys, store, tmp_path, github_ops):
    url, ids = store
    target = tmp_path / "spans.json"
    run(capsys, "trace", "export", ids[0], "--format", "otlp", "-o", str(target), "--store", url)
    # The same spans against another store whose session has other hashes.
    other = f"sqlite://{tmp_path}/other.db"
    store_b = cra.open_store(other)
    events = cra.open_store(url).read(ids[0])
    forged = [
        e.model_copy(update={"event_hash": "f" * 64}) if e.sequence == 23 else e for e in events
    ]
    store_b.append(forged)
    store_b.close()
    code, out, _ = run(capsys, "trace", "verify", "--from-otlp", str(target), "--store", other)
    assert code == 1
    assert "hash_mismatch" in out
    code, _, err = run(capsys, "trace", "verify", "--from-otlp", str(tmp_path / "no.json"))
    assert code == 2
    assert "file exporter" in err


def test_otlp_json_matches_what_verify_spans_expects(store):
    url, ids = store
    events = cra.open_store(url).read(ids[0])
    document = otlp_json([events], service_name="svc")
    path = Path(url.removeprefix("sqlite://")).with_name("spans.json")
    path.write_text(json.dumps(document))
    result = verify_spans(read_otlp_json(path), cra.open_store(url))
    assert result.valid
    assert result.as_dict()["valid"] is True
    resource = document["resourceSpans"][0]["resource"]["attributes"][0]
    assert resource == {"key": "service.name", "value": {"stringValue": "svc"}}
    assert otlp_json([[]])["resourceSpans"][0]["scopeSpans"][0]["spans"] == []


# -- report -------------------------------------------------------------------------------------


def test_report_writes_one_self_contained_file(capsys, store, tmp_path):
    url, ids = store
    target = tmp_path / "r.html"
    code, out, _ = run(capsys, "trace", "report", ids[0], "-o", str(target), "--store", url)
    assert code == 0
    assert "chain VALID" in out
    html = target.read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert "deny-repo-delete" in html
    assert "alice" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_report_with_checkpoint_and_default_name(capsys, jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(capsys, "trace", "keygen", "k")
    run(capsys, "trace", "checkpoint", str(jsonl), "--key", "k.key", "-o", "cps")
    code, document = run_json(
        capsys, "trace", "report", str(jsonl), "--checkpoint", "cps", "--pubkey", "k.pub"
    )
    assert code == 0
    assert document["verification"]["checkpoint_size"] == 33
    html = Path(document["output"]).read_text()
    assert Path(document["output"]).name.startswith("report-")
    assert "33" in html


def test_verify_from_otlp_rejects_other_json(capsys, store, tmp_path):
    url, _ = store
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"spans": []}')
    code, _, err = run(capsys, "trace", "verify", "--from-otlp", str(wrong), "--store", url)
    assert code == 2
    assert "not_otlp_json" in err
    assert "--format otlp" in err


def test_show_of_a_long_session_keeps_what_matters(capsys, tmp_path, github_ops):
    runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{tmp_path}/long")
    session = runtime.create_session("bulk-bot", "list a lot")
    for _ in range(30):
        auth = runtime.authorize(session.session_id, "github.issue.list", {"repo": "acme/app"})
        runtime.record_outcome(auth, result=[])
    with pytest.raises(cra.ActionDenied):
        runtime.authorize(
            session.session_id, "github.repo.delete", {"repo": "acme/a", "confirm_name": "acme/a"}
        )
    runtime.end_session(session.session_id)
    runtime.close()
    path = tmp_path / "long" / f"{session.session_id}.trace.jsonl"
    code, out, _ = run(capsys, "trace", "show", str(path), "--max-calls", "5")
    assert code == 0
    assert out.count("github.issue.list") == 4
    assert "DENIED" in out
    assert "26 allowed calls not shown" in out
    code, out, _ = run(capsys, "trace", "show", str(path), "--max-calls", "0")
    assert out.count("github.issue.list") == 30


# -- review findings: files of several sessions, strict reading, checkpoints, tail, IO ------


def test_an_export_of_several_sessions_verifies_and_shows_per_session(capsys, store, tmp_path):
    url, ids = store
    target = tmp_path / "all.jsonl"
    assert run(capsys, "trace", "export", "--all", "-o", str(target), "--store", url)[0] == 0
    code, document = run_json(capsys, "trace", "verify", str(target))
    assert code == 0
    assert [t["target"] for t in document["traces"]] == [f"{target}#{sid}" for sid in ids]
    code, _, err = run(capsys, "trace", "show", str(target))
    assert code == 2
    assert "several_sessions" in err
    assert f"{target}#" in err
    code, out, _ = run(capsys, "trace", "show", f"{target}#{unique_prefix(ids, 1)}")
    assert code == 0
    assert "release-bot" in out
    code, _, err = run(capsys, "trace", "show", f"{target}#nope")
    assert code == 2
    assert "pick one of" in err
    spans = tmp_path / "spans.json"
    assert run(capsys, "trace", "export", str(target), "--format", "otlp", "-o", str(spans))[0] == 0
    roots = [s for s in read_otlp_json(spans) if s.parent_span_id is None]
    assert len(roots) == 2  # one root per session, not both sessions under the first
    code, document = run_json(capsys, "trace", "verify", "--from-otlp", str(spans), "--store", url)
    assert code == 0


def test_interleaved_sessions_in_one_file_are_one_broken_chain(capsys, store, tmp_path):
    url, ids = store
    events = [cra.open_store(url).read(sid) for sid in ids]
    mixed = [e.model_dump_json() for pair in zip(events[0], events[1], strict=False) for e in pair]
    target = tmp_path / "mixed.jsonl"
    target.write_text("\n".join(mixed) + "\n")
    code, document = run_json(capsys, "trace", "verify", str(target))
    assert code == 1
    assert document["traces"][0]["error_type"] == "chain_broken"


def test_every_command_reads_files_as_strictly_as_verify(capsys, jsonl, tmp_path):
    lines = jsonl.read_text().splitlines()
    duplicated = lines[26].replace('"policy_id":', '"policy_id":"allow-everything","policy_id":', 1)
    assert duplicated != lines[26]
    bad = tmp_path / "dup.trace.jsonl"
    bad.write_text("\n".join([*lines[:26], duplicated, *lines[27:]]) + "\n")
    code, document = run_json(capsys, "trace", "verify", str(bad))
    assert code == 1
    assert document["traces"][0]["error_type"] == "malformed_event"
    for argv in (["show"], ["report", "-o", str(tmp_path / "r.html")], ["tail"]):
        code, _, err = run(capsys, "trace", argv[0], str(bad), *argv[1:])
        assert code == 2, argv
        assert "duplicate key" in err
    run(capsys, "trace", "keygen", str(tmp_path / "k"))
    code, _, err = run(capsys, "trace", "checkpoint", str(bad), "--key", str(tmp_path / "k.key"))
    assert code == 2
    assert "duplicate key" in err
    coerced = tmp_path / "coerced.trace.jsonl"
    coerced.write_text(jsonl.read_text().replace('"sequence":3,', '"sequence":"3",', 1))
    code, _, err = run(capsys, "trace", "show", str(coerced))
    assert code == 2
    assert "not a TRACE event" in err


def test_checkpoint_of_any_file_name_is_for_the_session(capsys, jsonl, tmp_path):
    renamed = tmp_path / "evidence.jsonl"
    renamed.write_bytes(jsonl.read_bytes())
    run(capsys, "trace", "keygen", str(tmp_path / "k"))
    code, document = run_json(
        capsys,
        "trace",
        "checkpoint",
        str(renamed),
        "--key",
        str(tmp_path / "k.key"),
        "-o",
        str(tmp_path / "cps"),
    )
    assert code == 0
    session_id = json.loads(jsonl.read_text().splitlines()[0])["session_id"]
    assert document["checkpoint"]["log_id"] == session_id
    code, document = run_json(
        capsys,
        "trace",
        "verify",
        str(renamed),
        "--checkpoint",
        str(tmp_path / "cps"),
        "--pubkey",
        str(tmp_path / "k.pub"),
    )
    assert code == 0
    assert document["traces"][0]["checkpoint_size"] == 33
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "trace", "checkpoint", str(empty), "--key", str(tmp_path / "k.key"))
    assert code == 2
    assert "nothing to vouch for" in err
    code, document = run_json(capsys, "trace", "verify", str(empty))
    assert code == 1
    assert document["traces"][0]["error_type"] == "empty_trace"


def test_verify_all_with_a_checkpoint_directory_covering_some_sessions(capsys, store, tmp_path):
    url, ids = store
    run(capsys, "trace", "keygen", str(tmp_path / "k"))
    cps = str(tmp_path / "cps")
    run(
        capsys,
        "trace",
        "checkpoint",
        ids[0],
        "--key",
        str(tmp_path / "k.key"),
        "-o",
        cps,
        "--store",
        url,
    )
    code, document = run_json(
        capsys,
        "trace",
        "verify",
        "--all",
        "--checkpoint",
        cps,
        "--pubkey",
        str(tmp_path / "k.pub"),
        "--store",
        url,
    )
    assert code == 0
    first, second = document["traces"]
    assert first["checkpoint_size"] == 33
    assert second["checkpoint"] == "missing"
    code, out, _ = run(
        capsys,
        "trace",
        "verify",
        "--all",
        "--checkpoint",
        cps,
        "--pubkey",
        str(tmp_path / "k.pub"),
        "--store",
        url,
    )
    assert "no checkpoint for this session" in out


def test_tail_follow_prints_only_new_events_of_old_sessions(capsys, tmp_path, github_ops):
    url = f"sqlite://{tmp_path}/live.db"
    runtime = cra.Runtime(atlases=[github_ops], store=url, durability="sync")
    old = runtime.create_session("old-bot", "long running")
    for _ in range(5):
        runtime.record_outcome(
            runtime.authorize(old.session_id, "github.issue.list", {"repo": "a/b"}), result=[]
        )
    newer = runtime.create_session("new-bot", "short")
    runtime.end_session(newer.session_id)

    def later() -> None:
        time.sleep(0.6)
        runtime.end_session(old.session_id)  # an old session, not loaded by `-n 1`

    writer = threading.Thread(target=later)
    writer.start()
    code, out, _ = run(
        capsys,
        "trace",
        "tail",
        "-n",
        "1",
        "-f",
        "--store",
        url,
        "--interval",
        "0.1",
        "--max-seconds",
        "2",
        "--json",
    )
    writer.join()
    runtime.close()
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["payload"].get("agent_id"), e["event_type"]) for e in events] == [
        (None, "session.ended"),  # the last event at start: new-bot's end
        (None, "session.ended"),  # then only what was written since: old-bot's end
    ]
    assert events[1]["session_id"] == old.session_id


def test_unwritable_output_is_an_input_error_with_a_hint(capsys, jsonl, tmp_path):
    for argv in (
        ["trace", "report", str(jsonl), "-o", str(tmp_path / "missing" / "r.html")],
        ["trace", "export", str(jsonl), "-o", str(tmp_path / "missing" / "x.jsonl")],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert "io_error" in err
        assert "writable" in err


def test_control_characters_from_a_trace_never_reach_the_terminal(capsys, tmp_path, github_ops):
    runtime = cra.Runtime(atlases=[github_ops], store=f"jsonl://{tmp_path}/t")
    session = runtime.create_session("bot", "Triage\x1b[8m hidden")
    auth = runtime.authorize(session.session_id, "github.issue.list", {"repo": "a/b"})
    runtime.record_outcome(auth, error=RuntimeError("boom \x1b[1A\x1b[2K\x1b]52;c;ZWNobw==\x07"))
    runtime.end_session(session.session_id)
    runtime.close()
    path = tmp_path / "t" / f"{session.session_id}.trace.jsonl"
    for argv in (
        ["show", str(path)],
        ["tail", str(path)],
        ["list", "--store", f"jsonl://{tmp_path}/t"],
    ):
        code, out, _ = run(capsys, "trace", *argv)
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out, argv
    code, out, _ = run(capsys, "trace", "show", str(path))
    assert "\\x1b[8m hidden" in out
    assert "\\x1b]52;c;" in out


# -- a real upstream atlas, end to end ----------------------------------------------------------


def test_every_trace_command_on_a_session_under_the_upstream_atlas(
    capsys, conformance_dir, tmp_path
):
    """The CRA self-governance atlas (real upstream): resolve, calls, then each trace command."""
    atlas = conformance_dir / "atlases" / "cra-development.json"
    url = f"sqlite://{tmp_path}/dev.db"
    approvals = iter([True, False])
    runtime = cra.Runtime(
        atlases=[atlas], store=url, approval_handler=lambda request: next(approvals)
    )
    session = runtime.create_session("cra-dev-agent", "Fix the hash chain verification")
    runtime.resolve(cra.resolve_request(session, context_hints=["trace", "hash"]))
    sid = session.session_id
    edit = runtime.authorize(sid, "trace.edit_chain", {"file": "trace/chain.rs"})
    runtime.record_outcome(edit, result="patched")
    with pytest.raises(cra.ActionDenied):  # the approver says no
        runtime.authorize(sid, "carp.edit_policy", {"file": "carp/policy.rs"})
    manifest = runtime.authorize(sid, "atlas.edit_manifest", {"file": "atlas.json"})
    runtime.record_outcome(manifest, result="ok")
    runtime.end_session(sid)
    runtime.close()
    for argv in (["atlas", "validate", str(atlas)], ["atlas", "lint", str(atlas)]):
        assert run(capsys, *argv)[0] == 0, argv
    code, out, _ = run(capsys, "trace", "show", sid, "--store", url)
    assert code == 0
    assert "trace.edit_chain" in out
    assert "approved by handler" in out
    assert "hash-computation-rule" in out  # the context block injected for the hints
    assert run(capsys, "trace", "verify", sid, "--store", url)[0] == 0
    report = tmp_path / "dev.html"
    assert run(capsys, "trace", "report", sid, "-o", str(report), "--store", url)[0] == 0
    assert "require-read-before-modify" in report.read_text()
    candidate = tmp_path / "stricter.json"
    document = json.loads(atlas.read_text())
    document["policies"].append(
        {"policy_id": "freeze-atlas", "type": "deny", "actions": ["atlas.*"], "reason": "frozen"}
    )
    candidate.write_text(json.dumps(document))
    code, document = run_json(
        capsys, "trace", "replay", sid, "--atlas", str(candidate), "--store", url
    )
    assert code == 0
    changed = {(d["kind"], d["action_id"]): d["after"] for d in document["changed"]}
    assert changed[("execute", "atlas.edit_manifest")] == ["deny", "freeze-atlas"]
    out_file = tmp_path / "dev.otlp.json"
    assert (
        run(
            capsys, "trace", "export", sid, "--format", "otlp", "-o", str(out_file), "--store", url
        )[0]
        == 0
    )
    assert run(capsys, "trace", "verify", "--from-otlp", str(out_file), "--store", url)[0] == 0
