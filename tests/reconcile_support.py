"""Helpers for the reconciliation and auditor tests: load a simulated district into the real server.

Terminals are enrolled through the API (CSR with the simulator's key, approved by
the admin), journals go through the real signed upload, the audit registry is
inserted with :func:`simulator.registry.load_registry`.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from simulator.journals import District, SimTerminal, registry_rows

#: Audit tables that tests/fixtures/db.py does not truncate between PostgreSQL tests.
AUDIT_TABLES = ("findings", "reconcile_runs", "reconcile_state", "card_entitlements", "benefit_cycles", "card_profiles",
                "terminal_sites")
AUDITOR_PASSWORD = "auditor password 1"


def truncate_audit_tables(db_url: str) -> None:
    """Empty the audit tables on PostgreSQL (SQLite test databases are fresh copies)."""
    if db_url.startswith("sqlite"):
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(AUDIT_TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def enrol(world: Any, t: SimTerminal) -> None:
    """Enrol and approve a simulated terminal with its own key."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, t.terminal_id)]))
           .sign(t.private_key, None))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": t.terminal_id, "csr": pem,
                                                           "code": world.enrolment_code(t.terminal_id)})
    assert r.status_code == 202, r.get_json()
    world.approve(t.terminal_id)


def upload(world: Any, t: SimTerminal, messages: list[bytes], batch: int = 500) -> list[Any]:
    """Upload through the real endpoint in batches; returns the responses."""
    from server.upload import SIGNATURE_HEADER, sign_envelope

    out = []
    for i in range(0, len(messages), batch):
        body = json.dumps({"terminal_id": t.terminal_id, "batch_id": uuid.uuid4().hex,
                           "entries": [base64.b64encode(m).decode() for m in messages[i:i + batch]]}).encode()
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign_envelope(body, t.terminal_id, t.private_key, t.kid)}
        out.append(world.client.post("/api/v1/journal/batches", data=body, headers=headers))
    return out


def install(app: Any, world: Any, district: District) -> None:
    """Enrol every terminal and load the registry rows of ``district``."""
    from server.extensions import db
    from simulator.registry import load_registry

    for t in district.terminals:
        enrol(world, t)
    with app.app_context():
        session = db.write_session()
        load_registry(session, registry_rows(district))
        session.commit()


def upload_all(world: Any, district: District) -> None:
    """Upload every terminal's whole journal; every entry must be accepted."""
    for t in district.terminals:
        for r in upload(world, t, t.messages()):
            assert r.status_code == 200, r.get_json()


def run(app: Any) -> Any:
    """Reconcile; returns the :class:`~server.reconcile.engine.RunResult`."""
    from server.extensions import db
    from server.reconcile.engine import reconcile

    with app.app_context():
        return reconcile(db.write_session())


def findings(app: Any, kind: Any = None) -> list[Any]:
    """All findings (optionally of one kind), oldest first."""
    from sqlalchemy import select

    from server.extensions import db
    from server.reconcile.models import Finding

    with app.app_context():
        stmt = select(Finding).order_by(Finding.id)
        if kind is not None:
            stmt = stmt.where(Finding.kind == kind)
        rows = list(db.session.scalars(stmt))
        db.session.expunge_all()  # keep the loaded state past the context's rollback
        return rows


def evidence(f: Any) -> set[str]:
    """A finding's evidence ids as a set of hex strings."""
    return set(json.loads(f.evidence))


def add_auditor(app: Any, username: str = "audrey") -> None:
    """Create a person with the auditor role."""
    from server.auth import create_person
    from server.extensions import db
    from server.models import PersonRole

    with app.app_context():
        session = db.write_session()
        create_person(session, username, AUDITOR_PASSWORD, PersonRole.AUDITOR)
        session.commit()


@pytest.fixture
def audit_db(db_url: str) -> str:
    """``db_url`` with the audit tables emptied too (use before ``world``)."""
    truncate_audit_tables(db_url)
    return db_url


def findings_snapshot(session: Any) -> dict[str, tuple[Any, ...]]:
    """Every stored finding by fingerprint, as the columns an auditor sees (kind … evidence)."""
    from sqlalchemy import select

    from server.reconcile.models import Finding

    return {
        f.fingerprint: (f.kind.value, f.severity.value, f.status.value, f.reason, f.card_id, f.terminal_id,
                        f.summary, f.detail, f.evidence)
        for f in session.scalars(select(Finding))
    }


def incremental_then_full(cfg: Any) -> tuple[Any, dict[str, tuple[Any, ...]]]:
    """An incremental run (committed), then a full run on top that must change nothing (rolled back).

    The issue-21 equivalence check; call inside an app context.
    :returns: the incremental run's result and the findings it left (:func:`findings_snapshot`).
    """
    from server.extensions import db
    from server.reconcile.engine import reconcile

    result = reconcile(db.write_session(), cfg, incremental=True)
    session = db.write_session()
    incremental = findings_snapshot(session)
    full = reconcile(session, cfg, commit=False)
    after_full = findings_snapshot(session)
    session.rollback()
    assert full.mode == "full"
    assert (full.new, full.resolved) == (0, 0), full
    assert after_full == incremental
    return result, incremental
