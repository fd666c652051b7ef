"""The auditor's decision form with odd input: NUL characters and very long reasons.

The JSON API refuses U+0000 (``nul_character``), but the HTML form passed it to the database:
PostgreSQL cannot store NUL in text, so confirming a finding with such a reason was a 500.
A 200,000-character reason was stored whole and repeated in the audit log.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog
from server.reconcile.models import FindingStatus
from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
    findings,
    install,
    run,
    upload_all,
)

UTC = dt.timezone.utc


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def finding_id(app, audit_db, world) -> int:
    """One open card_fork finding (a cloned card redeemed at two terminals)."""
    d = District.new(2, 2, seed=5, regions=["62.71"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    d.terminals[0].redeem(d.cards[0], _ms(2), "food", 150_000)
    d.terminals[1].redeem(d.cards[0].clone(counter=1), _ms(2, 30), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    add_auditor(app)
    return findings(app)[0].id


def _decide(client, finding_id: int, reason: str):
    from tests.audit_login import form_login

    form_login(client, "audrey", AUDITOR_PASSWORD)
    page = client.get(f"/audit/findings/{finding_id}").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)
    return client.post(f"/audit/findings/{finding_id}/decision",
                       data={"csrf": csrf, "status": "confirmed", "reason": reason})


def _decisions(app) -> int:
    with app.app_context():
        return len(db.session.scalars(select(AuditLog).where(AuditLog.action.like("finding.%"))).all())


@pytest.mark.parametrize("reason", ["clone\x00confirmed", "x" * 2001])
def test_a_reason_the_database_cannot_or_should_not_hold_is_422(reason, app, finding_id):
    r = _decide(app.test_client(), finding_id, reason)
    assert r.status_code == 422, r.data[:300]
    assert "reason" in r.get_data(as_text=True)
    assert findings(app)[0].status is FindingStatus.OPEN and _decisions(app) == 0


def test_an_ordinary_reason_is_stored(app, finding_id):
    r = _decide(app.test_client(), finding_id, "  same UID at two counters 40 km apart in 30 min  ")
    assert r.status_code == 302, r.data[:300]
    f = findings(app)[0]
    assert f.status is FindingStatus.CONFIRMED and f.reason == "same UID at two counters 40 km apart in 30 min"
    assert _decisions(app) == 1
