"""``huma sim district``: a small seeded district through the real upload API and reconciliation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from huma.cli import cli
from simulator.district import DistrictPlan, DistrictReport, open_database, run_district, unexplained


def test_seeded_clones_gaps_and_skew_are_found_and_nothing_else(tmp_path: Path) -> None:
    app, token = open_database(f"sqlite:///{tmp_path / 'd.db'}", tmp_path)
    plan = DistrictPlan(households=200, terminals=8, days=4, skewed=1, torn=4, duplicate_batches=2, partial=2,
                        gaps=2, clones=3, seed=7)
    report = run_district(plan, app, token)
    # every entry the terminals kept reached the server; retries were recognised as duplicates
    assert report.results["accepted"] == report.entries
    assert report.results["duplicate"] > 0 and set(report.results) == {"accepted", "duplicate"}
    forks = {f["card_id"] for f in report.finding_rows if f["kind"] == "card_fork"}
    assert forks == set(report.clone_cards) and len(forks) == 3
    assert all(f["evidence"] for f in report.finding_rows if f["kind"] == "card_fork")
    assert {f["terminal_id"] for f in report.finding_rows if f["kind"] == "terminal_gap"} == set(report.gap_terminals)
    assert {f["terminal_id"] for f in report.finding_rows if f["kind"] == "clock_skew"} == set(report.skewed_terminals)
    # torn writes resolved as FINISHED and honest households raise nothing
    assert not {f["card_id"] for f in report.finding_rows} & set(report.torn_cards)
    assert unexplained(report) == []


def test_honest_district_has_no_findings(tmp_path: Path) -> None:
    app, token = open_database(f"sqlite:///{tmp_path / 'd.db'}", tmp_path)
    report = run_district(DistrictPlan(households=100, terminals=5, days=2, skewed=0, torn=3, gaps=0, clones=0),
                          app, token)
    assert report.entries > 100 and report.finding_rows == []


def test_cli_prints_totals_and_counts() -> None:
    result = CliRunner().invoke(cli, ["sim", "district", "--households", "60", "--terminals", "4", "--days", "2",
                                      "--clones", "1", "--gaps", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["findings"]["card_fork"] == 1 and doc["findings"]["terminal_gap"] == 1
    assert doc["unexplained_findings"] == 0 and doc["entries"] == doc["results"]["accepted"]


def _kept_reference(plan: DistrictPlan, url: str, tmp_path: Path) -> dict[str, object]:
    """The pre-streaming simulator: every entry generated in memory, then uploaded terminal by terminal."""
    from server.audit.exports import finding_records
    from server.extensions import db
    from server.reconcile.engine import reconcile
    from simulator.district import BATCH, _Uploader, generate
    from simulator.journals import registry_rows
    from simulator.registry import load_registry

    app, token = open_database(url, tmp_path)
    d, report, gaps = generate(plan)
    up = _Uploader(app, token)
    for t in d.terminals:
        up.enrol(t)
    with app.app_context():
        session = db.write_session()
        load_registry(session, registry_rows(d))
        session.commit()
    partial = {t.terminal_id for t in d.rng.sample(d.terminals, min(plan.partial, len(d.terminals)))}
    duplicates_left = plan.duplicate_batches
    for t in d.terminals:
        lost = gaps.get(t.terminal_id)
        messages = [e.message for i, e in enumerate(t.entries) if lost is None or i not in lost]
        report.entries += len(messages)
        if t.terminal_id in partial and len(messages) > 2:
            cut = len(messages) // 2
            up.upload(t, messages[:cut], report)
            messages = messages[cut - 1:]
        for i in range(0, len(messages), BATCH):
            up.upload(t, messages[i:i + BATCH], report)
            if duplicates_left > 0:
                up.upload(t, messages[i:i + BATCH], report)
                duplicates_left -= 1
    with app.app_context():
        reconcile(db.write_session())
        report.finding_rows = list(finding_records(db.session))
    return _comparable(report)


def _comparable(report: DistrictReport) -> dict[str, object]:
    """What must not change between two runs of one seed: totals, seeded faults, findings (ids aside)."""
    import re
    from collections import Counter

    rows = sorted(re.sub(r'"[0-9a-f]{32}"', '"ID"', json.dumps(
        {k: f[k] for k in ("kind", "card_id", "terminal_id", "severity", "summary", "detail")}, sort_keys=True,
        default=str)) for f in report.finding_rows)
    return {"entries": report.entries, "requests": report.requests, "results": dict(report.results),
            "faults": (report.clone_cards, report.gap_terminals, report.skewed_terminals, report.torn_cards),
            "rows": rows, "kinds": Counter(f["kind"] for f in report.finding_rows)}


def test_streaming_run_equals_the_in_memory_run_of_the_same_seed(tmp_path: Path) -> None:
    """Streaming (plan pass, then batches sent as they fill) changes nothing a run reports.

    Entry ids are random (UUIDv7) and keys fresh, so they are masked; the rest is equal.
    """
    plan = DistrictPlan(households=1_300, terminals=6, days=4, skewed=1, torn=4, duplicate_batches=3, partial=2,
                        gaps=2, clones=2, seed=11)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = _kept_reference(plan, f"sqlite:///{tmp_path / 'a' / 'd.db'}", tmp_path / "a")
    app, token = open_database(f"sqlite:///{tmp_path / 'b' / 'd.db'}", tmp_path / "b")
    streamed = _comparable(run_district(plan, app, token))
    assert streamed == reference
    assert reference["requests"] > 6 * 2  # several batches per terminal: the batching was exercised


def test_the_simulation_keeps_its_receipt_key_in_its_work_directory(tmp_path: Path, monkeypatch: Any,
                                                                    caplog: Any) -> None:
    """Not ``<checkout>/instance/receipt-key.pem`` with a "back it up" warning, nor a real server's key."""
    import logging

    from server.receipts import receipt_key_path

    elsewhere = tmp_path / "real-server-key.pem"
    monkeypatch.setenv("HUMA_RECEIPT_KEY", str(elsewhere))  # an operator's shell, set for the real server
    work = tmp_path / "work"
    work.mkdir()
    caplog.set_level(logging.WARNING, logger="server.receipts")
    app, token = open_database(f"sqlite:///{work / 'd.db'}", work)
    run_district(DistrictPlan(households=20, terminals=2, days=1, skewed=0, torn=0, gaps=0, clones=0), app, token)
    key = receipt_key_path(app.config, app.instance_path)
    assert key.parent == work and key.is_file()  # made by the simulated uploads' receipts
    assert not elsewhere.exists()
    generated = [r.getMessage() for r in caplog.records if "generated the server receipt key" in r.getMessage()]
    assert generated and all(str(work) in m for m in generated), generated
