"""Planted clones and rollbacks against the simulated deny-list cycle (issue 20): taken ≤ the docs bound.

The campaign runs the real upload API, reconciliation, provisional denial, publication and
bundle verification, and the counters' real tap decision (simulator/attackers.py); the bound is
docs/security.md "The exposure that remains" for the same cadence and limits.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from huma.cli import main
from simulator.attackers import AttackPlan, exposure_bound, run_campaign
from simulator.district import open_database


@pytest.mark.parametrize(("cycle", "cycle_cap"), [((24.0, 6.0, 6.0, 24.0), True), ((24.0, 6.0, 6.0, 24.0), False),
                                                ((12.0, 3.0, 3.0, 6.0), False)])
def test_attackers_take_no_more_than_the_bound_and_are_stopped_by_provisional_denial(tmp_path: Path, cycle,
                                                                                      cycle_cap):
    u, r, p, f = cycle
    plan = AttackPlan(households=60, terminals=6, days=6, clones=2, rollbacks=2, visits_per_day=4,
                      upload_h=u, reconcile_h=r, publish_h=p, fetch_h=f, seed=3)
    if not cycle_cap:  # only the detection delay and the caps between uploads hold them
        plan.limits = dataclasses.replace(plan.limits, per_card_cycle={})
    app, token = open_database(f"sqlite:///{tmp_path / 'd.db'}", tmp_path)
    report = run_campaign(plan, app, token)

    assert set(report.taken) == set(report.bound) and len(report.taken) == 4
    assert all(report.taken[c] <= report.bound[c] for c in report.taken), (report.taken, report.bound)
    assert report.taken_total > 0
    # Every attacker's card reached a bundle within the detection delay, with no human decision.
    assert set(report.denied_at) == set(report.taken)
    assert all(h <= 24 + u + r + p for h in report.denied_at.values())  # first forked tap is on day 2
    assert report.declines["card_denied"] > 0
    assert {"card_fork", "card_rollback", "counter_backwards"} <= set(report.findings)


def test_bound_formula():
    plan = AttackPlan(upload_h=24, reconcile_h=6, publish_h=6, fetch_h=24)
    # W = 60 h: at most ⌈60/24⌉ + 1 = 4 upload windows per counter, 400,000 rupiah each, but no
    # more than the 1,200,000 a card may take at one counter in a cycle.
    assert exposure_bound(plan, 3) == 3 * 1_200_000
    no_cycle_cap = dataclasses.replace(plan.limits, per_card_cycle={})
    assert exposure_bound(dataclasses.replace(plan, limits=no_cycle_cap), 3) == 3 * 4 * 400_000
    fast = dataclasses.replace(plan, upload_h=12, reconcile_h=3, publish_h=3, fetch_h=6, limits=no_cycle_cap)
    assert exposure_bound(fast, 3) == 3 * 3 * 400_000  # W = 24 h: ⌈24/12⌉ + 1 windows


def test_cli_campaign_reports_taken_and_bound(capsys):
    code = main(["sim", "district", "--campaign", "--households", "40", "--terminals", "4", "--days", "4",
                 "--clones", "1", "--rollbacks", "1", "--cycle", "12", "3", "3", "12", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["attackers"] == 2 and 0 < doc["taken_rupiah"] <= doc["bound_rupiah"]
    assert doc["bundles_published"] >= 2 and len(doc["denied_after_h"]) == 2
