"""``huma sim district``: a small seeded district through the real upload API and reconciliation."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from huma.cli import cli
from simulator.district import DistrictPlan, open_database, run_district, unexplained


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
