"""Auditor pages of issue 19 on SQLite and PostgreSQL: the findings queue paged without a cap and
searched by card id, household reference and receipt code; bulk decisions (CSRF, one audit row per
finding, all or none); summaries in Indonesian; a journal conflict's newcomer and the stored entry
it collides with decoded; DECLINED reasons on the pages and in the journal export.
"""

from __future__ import annotations

import csv
import datetime as dt
import glob
import io
import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select

from cardlib.records.journal import EntryKind, JournalEntry, sign_entry
from server.reconcile.models import Finding, FindingKind, FindingStatus, Severity
from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    add_auditor,
    audit_db,
    findings,
    install,
    run,
    upload,
    upload_all,
)
from tests.test_audit import pinned  # noqa: F401 - a fixture: the anchors verify-export pins

UTC = dt.UTC


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def conflict_world(app: Any, audit_db: str, world: Any) -> dict[str, Any]:  # noqa: F811 - fixture
    """A clone (card fork), a declined tap, a conflicting second entry for one seq; reconciled."""
    from sqlalchemy import update

    from server.extensions import db
    from server.reconcile.models import CardProfile

    d = District.new(3, 4, seed=11, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    card = d.cards[0]
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    d.terminals[1].redeem(card.clone(counter=1), _ms(2, 30), "food", 150_000)
    commit = d.terminals[2].redeem(d.cards[2], _ms(3), "cash", 250_000)[1]
    declined = d.terminals[2].append(EntryKind.DECLINED, _ms(3, 5), card_id=d.cards[2].card_id,
                                     tag_uid=d.cards[2].tag_uid, programme="cash", decline_reason="nothing_left")
    install(app, world, d)
    upload_all(world, d)
    forged = sign_entry(JournalEntry(**{**commit.entry.__dict__, "amount": 1}), d.terminals[2].private_key,
                        d.terminals[2].kid)
    assert upload(world, d.terminals[2], [forged.message])[0].status_code == 409
    with app.app_context():
        session = db.write_session()
        session.execute(update(CardProfile).where(CardProfile.card_id == card.card_id)
                        .values(household_ref="9f3c2a1b00000001"))
        session.commit()
    run(app)
    add_auditor(app)
    return {"district": d, "card": card, "commit": commit, "declined": declined, "forged": forged}


def _login(client: Any) -> None:
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD

    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="finding" data-kind="[a-z_]+" data-id="(\d+)"', html)]


def test_search_by_card_household_and_receipt_code(app, conflict_world, world):
    from cardlib.records.receipt import receipt_code

    client, card = world.client, conflict_world["card"]
    _login(client)
    forks = {f.id for f in findings(app, FindingKind.CARD_FORK)}
    by_card = _ids(client.get(f"/audit/findings?status=all&q={card.card_id}").get_data(as_text=True))
    assert forks <= set(by_card) and all(f.card_id == card.card_id for f in findings(app) if f.id in by_card)
    by_household = _ids(client.get("/audit/findings?status=all&q=9F3C2A1B00000001").get_data(as_text=True))
    assert set(by_household) == set(by_card)
    # the receipt code the counter showed for the clone's COMMIT finds the fork
    commit = conflict_world["district"].terminals[1].entries[-1]
    assert commit.entry.kind is EntryKind.COMMIT
    code = receipt_code(commit.entry_hash)
    by_code = _ids(client.get(f"/audit/findings?status=all&q={code.lower()}").get_data(as_text=True))
    assert forks <= set(by_code) and set(by_code) <= set(by_card)
    nothing = client.get("/audit/findings?status=all&q=0000000000000000").get_data(as_text=True)
    assert 'id="no-findings"' in nothing


def test_receipt_codes_are_the_first_40_bits_of_the_tagged_entry_hash_in_base32():
    import base64
    import hashlib

    from cardlib.records.receipt import receipt_code
    from server.audit.receipts import normalise_code

    for h in (bytes(32), bytes(range(32)), b"\xff" * 32):
        bits = base64.b32encode(hashlib.sha256(b"huma-betang/receipt/v1" + h).digest()[:5]).decode()
        assert receipt_code(h) == f"{bits[:4]}-{bits[4:]}"
        assert normalise_code(receipt_code(h).replace("-", "").lower()) == receipt_code(h)
    assert normalise_code("abcd2345") == "ABCD-2345" and normalise_code("ABCD-1234") is None


def test_queue_pages_have_no_cap(app, conflict_world, world):
    from server.extensions import db

    with app.app_context():
        session = db.write_session()
        for i in range(620):
            session.add(Finding(fingerprint=f"{i:064x}", kind=FindingKind.CLOCK_SKEW, severity=Severity.LOW,
                                terminal_id="T-0000", summary=f"terminal T-0000: entries dated up to {i} s after "
                                                              "the server received them",
                                evidence="[]", detail="{}", status=FindingStatus.OPEN))
        session.commit()
        total = db.session.scalar(select(func.count()).select_from(Finding).where(
            Finding.status == FindingStatus.OPEN))
    client = world.client
    _login(client)
    seen: list[int] = []
    page = 1
    while True:
        html = client.get(f"/audit/findings?page={page}").get_data(as_text=True)
        ids = _ids(html)
        if not ids:
            break
        seen += ids
        page += 1
    assert len(seen) == len(set(seen)) == total > 600
    assert "detik setelah diterima server" in client.get(
        "/audit/findings?page=7").get_data(as_text=True)  # Indonesian summaries


def test_bulk_decision_needs_csrf_a_reason_and_is_audited_per_finding(app, conflict_world, world):
    from server.extensions import db
    from server.models import AuditLog

    client = world.client
    _login(client)
    html = client.get("/audit/findings").get_data(as_text=True)
    ids = _ids(html)[:3]
    assert len(ids) == 3
    form = {"finding_id": [str(i) for i in ids], "status": "dismissed", "reason": "uji coba lapangan"}
    assert client.post("/audit/findings/decisions", data=form).status_code == 403  # no CSRF token
    assert client.post("/audit/findings/decisions", data={**form, "reason": " ", "csrf": _csrf(html)}
                       ).status_code == 422
    assert client.post("/audit/findings/decisions", data={**form, "finding_id": [*form["finding_id"], "999999"],
                                                          "csrf": _csrf(html)}).status_code == 404
    assert all(f.status is FindingStatus.OPEN for f in findings(app) if f.id in ids)  # all or none
    r = client.post("/audit/findings/decisions", data={**form, "csrf": _csrf(html), "back": "/audit/findings?kind="})
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/findings?kind=")
    decided = [f for f in findings(app) if f.id in ids]
    assert all(f.status is FindingStatus.DISMISSED and f.reason == "uji coba lapangan" for f in decided)
    with app.app_context():
        targets = db.session.scalars(select(AuditLog.target).where(AuditLog.action == "finding.dismissed")).all()
    assert sorted(int(t.split(":")[1]) for t in targets) == sorted(ids)
    listed = client.get("/audit/findings?status=dismissed").get_data(as_text=True)
    assert listed.count('class="decision-reason">uji coba lapangan<') == 3


def test_conflict_shows_the_conflicting_entry_and_declines_their_reason(app, conflict_world, world,
                                                                       pinned):  # noqa: F811 - fixture
    client = world.client
    _login(client)
    conflict = findings(app, FindingKind.JOURNAL_CONFLICT)[0]
    html = client.get(f"/audit/findings/{conflict.id}").get_data(as_text=True)
    assert 'id="conflict-1"' in html and conflict_world["forged"].entry_hash.hex() in html
    assert conflict_world["commit"].entry.entry_id.hex() in html  # the stored entry, decoded
    section = html[html.index('id="conflict-1"'):]
    # the newcomer's amount and the kept one's
    assert "Bantuan tunai · 1<" in section and "Bantuan tunai · 250000<" in section
    assert "entri kedua yang berbeda ditandatangani untuk urutan" in html  # translated summary
    t2 = conflict_world["district"].terminals[2].terminal_id
    page = client.get(f"/audit/terminals/{t2}").get_data(as_text=True)
    assert 'class="decline">hak sudah habis<' in page
    card2 = conflict_world["district"].cards[2].card_id
    assert 'data-code="nothing_left" class="decline">nothing left this period<' in client.get(
        f"/audit/cards/{card2}?lang=en").get_data(as_text=True)
    export = client.get(f"/audit/export/journal.csv?terminal_id={t2}").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(export)))
    assert [r["decline_reason"] for r in rows if r["kind"] == "DECLINED"] == ["nothing_left"]
    doc = json.loads(client.get(f"/audit/export/journal.json?terminal_id={t2}").get_data(as_text=True))
    from server.audit.exports import verify_journal_export

    assert verify_journal_export(doc, **pinned).counts[t2] == len(doc["items"])  # the new column verifies


def test_every_dashboard_and_summary_text_has_an_indonesian_translation():
    from jinja2.ext import babel_extract

    from server.audit.i18n import translations
    from server.audit.summaries import SHAPES
    from terminal.policy import DeclineReason

    ids: set[str] = set()
    for path in glob.glob("server/audit/templates/*.html") + glob.glob("server/dashboard/templates/*.html"):
        with open(path, "rb") as fh:
            for _, _, msg, _ in babel_extract(fh, ["_", "gettext"], [], {"extensions": "jinja2.ext.i18n"}):
                if isinstance(msg, str):
                    ids.add(msg)
    ids |= {m for _, m in SHAPES} | {r.value for r in DeclineReason}
    ids |= {f"health_{s}" for s in ("ok", "stale", "offline", "never")}
    cat = translations("id")
    same = {"Audit", "Status", "Terminal", "Total", "Kalimantan Tengah"}
    assert sorted(m for m in ids if cat.gettext(m) == m and m not in same) == []
    en = translations("en")
    assert en.gettext("health_stale") == "late"


def test_every_stored_summary_shape_is_translated(app, conflict_world):
    """Summaries the real checks wrote match a known shape (else they would stay English)."""
    from server.audit.i18n import translations
    from server.audit.summaries import translate_summary

    gettext = translations("id").gettext
    for f in findings(app):
        assert translate_summary(f.summary, gettext) != f.summary, f.summary


def test_pages_name_programmes_in_the_readers_language_not_by_code(app, conflict_world, world):
    """Card, terminal and finding pages show "Paket pangan" / "Food package", never the raw code."""
    client, card = world.client, conflict_world["card"]
    _login(client)
    terminal = conflict_world["district"].terminals[0].terminal_id
    fork = next(f.id for f in findings(app) if f.card_id == card.card_id)
    for path in (f"/audit/cards/{card.card_id}", f"/audit/terminals/{terminal}", f"/audit/findings/{fork}"):
        page = client.get(f"{path}?lang=id")  # ?lang= sets a cookie: ask for each language explicitly
        assert page.status_code == 200, (path, page.status_code)
        html = page.get_data(as_text=True)
        assert "Paket pangan" in html and ">food<" not in html and "food ·" not in html, (path, html)
        assert "Food package" in client.get(f"{path}?lang=en").get_data(as_text=True), path
