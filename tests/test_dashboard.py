"""The programme dashboard (issue 19) on SQLite and PostgreSQL: households expected and collected
per regency, district and WIB day, the pending list and its CSV, throughput, terminal health,
roles, Rupiah and cycle names, and the SVG charts served without JavaScript.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest

from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
    install,
    run,
    upload_all,
)

UTC = dt.UTC


def _ms(day: int, h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, day, h, m, tzinfo=UTC).timestamp() * 1000)


def add_person(app: Any, username: str, role: str) -> None:
    from server.auth import create_person
    from server.extensions import db
    from server.models import PersonRole

    with app.app_context():
        session = db.write_session()
        create_person(session, username, AUDITOR_PASSWORD, PersonRole(role))
        session.commit()


def set_households(app: Any, district: District, villages: list[str]) -> dict[str, str]:
    """Give each card a household ref and a village code (deeper than its regency); two cards share one household."""
    from sqlalchemy import update

    from server.extensions import db
    from server.reconcile.models import CardProfile

    refs: dict[str, str] = {}
    last_of: dict[str, str] = {}
    with app.app_context():
        session = db.write_session()
        kapuas = [c for c in district.cards if c.region == "62.03"]
        for i, card in enumerate(district.cards):
            ref = f"{0x9F3C2A1B00000000 + i:016x}"
            if card is kapuas[-1]:
                ref = refs[kapuas[-2].card_id]  # the last two Kapuas cards: one household
            village = next(v for v in villages if v.startswith(card.region))
            refs[card.card_id] = last_of[card.region] = ref
            session.execute(update(CardProfile).where(CardProfile.card_id == card.card_id)
                            .values(household_ref=ref, region=village))
        session.commit()
    return refs


@pytest.fixture
def programme(app: Any, audit_db: str, world: Any) -> dict[str, Any]:  # noqa: F811 - fixture
    """Six cards (five households) in Palangka Raya and Kapuas, three collected on two days at two terminals."""
    d = District.new(2, 6, seed=7, regions=["62.71", "62.03"])
    for t in d.terminals:
        t.boot(_ms(2, 0, 30))
    install(app, world, d)
    refs = set_households(app, d, ["62.71.01.1001", "62.03.05.2003"])
    by_region = {r: [c for c in d.cards if c.region == r] for r in ("62.71", "62.03")}
    t71, t03 = d.local_terminals("62.71")[0], d.local_terminals("62.03")[0]
    t71.redeem(by_region["62.71"][0], _ms(2, 1), "food", 150_000)  # 08:00 WIB, 2 March
    t71.redeem(by_region["62.71"][1], _ms(2, 1, 20), "cash", 250_000)
    t03.redeem(by_region["62.03"][0], _ms(2, 18), "food", 150_000)  # 01:00 WIB, 3 March
    upload_all(world, d)
    add_auditor(app)
    add_person(app, "manny", "manager")
    return {"district": d, "refs": refs, "by_region": by_region}


def plant_two_region_tap(app: Any, world: Any, programme: dict[str, Any]) -> None:
    """A Palangka Raya card and its copy redeemed in Kapuas 20 minutes apart (impossible travel, a fork),
    uploaded and reconciled: the programme's findings pages then list findings naming a card and a terminal."""
    d = programme["district"]
    card = programme["by_region"]["62.71"][2]
    d.local_terminals("62.71")[0].redeem(card, _ms(4, 2), "food", 150_000)
    d.local_terminals("62.03")[0].redeem(card.clone(counter=1), _ms(4, 2, 20), "food", 150_000)
    upload_all(world, d)
    run(app)


def _login(client: Any, username: str = "audrey") -> Any:
    from tests.audit_login import form_login

    return form_login(client, username, AUDITOR_PASSWORD)


def test_progress_per_regency_district_and_wib_day(app, programme):
    from server.dashboard import queries
    from server.extensions import db
    from server.regions import Level

    with app.app_context():
        cycle = queries.current_cycle(db.session, "20261")
        rows = {r.region: r for r in queries.progress(db.session, cycle)}
        # 3 cards in each regency; the last two Kapuas cards are one household
        assert (rows["62.71"].expected, rows["62.71"].collected) == (3, 2)
        assert (rows["62.03"].expected, rows["62.03"].collected) == (2, 1)
        assert queries.totals(list(rows.values())).expected == 5
        districts = queries.progress(db.session, cycle, Level.DISTRICT, within="62.71")
        assert [(r.region, r.expected, r.collected) for r in districts] == [("62.71.01", 3, 2)]
        assert queries.per_day(db.session, cycle) == [("2026-03-02", 2), ("2026-03-03", 1)]  # WIB days
        pending = queries.pending(db.session, cycle)
        assert len(pending) == 2 and {p.region for p in pending} == {"62.71.01.1001", "62.03.05.2003"}
        shared = next(p for p in pending if p.region.startswith("62.03"))
        assert len(shared.card_ids) == 2  # one household, two cards, one line
        speed = {t.terminal_id: t for t in queries.throughput(db.session, cycle)}
        t71 = programme["district"].local_terminals("62.71")[0].terminal_id
        assert (speed[t71].households, speed[t71].active_hours, speed[t71].peak) == (2, 1, 2)
        health = queries.terminal_health(db.session)
        assert {h.status for h in health} <= {"ok", "stale", "offline"} and all(h.last_sync for h in health)
        assert {p: a for p, _u, a in queries.amounts(db.session, cycle)} == {"cash": 250_000,
                                                                                   "food": 300_000}


def test_dashboard_page_for_managers_in_both_languages(app, programme, world):
    client = world.client
    r = _login(client, "manny")
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/programme/")
    page = client.get("/audit/programme/?cycle=20261")
    assert page.status_code == 200
    assert "script-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert "<script" not in html
    assert "Kota Palangka Raya" in html and "Kabupaten Kapuas" in html
    assert "Semester I 2026" in html and "Rp250.000" in html  # Indonesian by default
    assert 'id="total-expected">5<' in html and 'id="total-share">60%<' in html
    en = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert "2026 semester 1" in en and "IDR250,000" in en and "Programme progress" in en
    district = client.get("/audit/programme/?cycle=20261&region=62.71").get_data(as_text=True)
    assert 'data-region="62.71.01"' in district
    # a manager has no auditor page
    assert client.get("/audit/findings").status_code == 403
    for name in ("progress", "daily", "throughput"):
        svg = client.get(f"/audit/programme/charts/{name}.svg?cycle=20261")
        assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
        assert svg.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert svg.get_data(as_text=True).startswith("<svg")
    assert client.get("/audit/programme/charts/nope.svg").status_code == 404
    assert client.get("/audit/programme/?region=63.01").status_code == 400
    assert client.get("/audit/programme/?cycle=19991").status_code == 404


def test_pending_csv_for_field_workers_is_audited(app, programme, world):
    from sqlalchemy import select

    from server.extensions import db
    from server.models import AuditLog

    client = world.client
    _login(client)
    r = client.get("/audit/programme/export/pending.csv?cycle=20261&region=62.03")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert 'filename="belum-ambil-20261-62.03.csv"' in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert len(rows) == 1 and rows[0]["regency"] == "Kabupaten Kapuas" and len(rows[0]["card_ids"].split()) == 2
    page = client.get("/audit/programme/pending?cycle=20261").get_data(as_text=True)
    assert page.count('class="pending"') == 2
    with app.app_context():
        actions = [a.action for a in db.session.scalars(select(AuditLog))]
    assert "export.pending" in actions


def test_technicians_may_not_log_in(app, programme, world):
    add_person(app, "tess", "technician")
    r = _login(world.client, "tess")
    assert r.status_code == 403


def test_formats():
    from server.audit.i18n import cycle_name, duration, rupiah, wib

    assert rupiah(74_500_000, "id") == "Rp74.500.000"
    assert cycle_name("20262", "en") == "2026 semester 2" and cycle_name("20262", "id") == "Semester II 2026"
    assert wib(dt.datetime(2026, 3, 2, 17, 30, tzinfo=UTC), "id") == "2026-03-03 00:30 WIB"
    assert duration(dt.timedelta(hours=26, minutes=5), "id") == "1 hari 2 jam"


def _deny_in_stored_bundle(app: Any, keystore: Any, card_ids: list[str]) -> None:
    """Publish (store) a trust bundle whose deny list holds ``card_ids``, as ``huma server bundle publish`` does."""
    from cardlib.records.bundle import CARD_ID_LENGTH, SortedIdSet, sign_keystore_bundle
    from server.bundles import store_bundle
    from server.extensions import db
    from tests.fixtures.keys import KEY_PW

    now = int(dt.datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    deny = SortedIdSet.from_ids([bytes.fromhex(c) for c in card_ids], CARD_ID_LENGTH)
    bundle, blob = sign_keystore_bundle(keystore, KEY_PW, version=7, issued_at=now, expires_at=now + 86_400 * 30,
                                        deny_cards=deny)
    with app.app_context():
        session = db.write_session()
        store_bundle(session, bundle.version, blob, dt.datetime.fromtimestamp(bundle.expires_at, UTC))
        session.commit()


def test_pending_marks_blocked_and_revoked_cards_and_shows_the_current_one(app, programme, world, keystore):
    """A field worker must not send a household back with its lost (deny-listed) or replaced (revoked) card."""
    from sqlalchemy import update

    from server.dashboard import queries
    from server.extensions import db
    from server.reconcile.models import CardProfile

    lost, kept = sorted(c.card_id for c in programme["by_region"]["62.03"][1:])  # the shared household's two cards
    replaced = programme["by_region"]["62.71"][2].card_id
    _deny_in_stored_bundle(app, keystore, [lost])
    with app.app_context():
        session = db.write_session()
        session.execute(update(CardProfile).where(CardProfile.card_id == replaced)
                        .values(revoked_at=dt.datetime(2026, 3, 1, tzinfo=UTC), revoke_reason="lost"))
        session.commit()
        cycle = queries.current_cycle(db.session, "20261")
        by_household = {p.region[:5]: p for p in queries.pending(db.session, cycle)}
    shared = by_household["62.03"]
    assert shared.card_ids == (kept,) and shared.blocked == {lost: "denied"}
    assert by_household["62.71"].card_ids == () and by_household["62.71"].blocked == {replaced: "revoked"}

    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/pending?cycle=20261&lang=en").get_data(as_text=True)
    row = next(r for r in html.split('<tr class="pending"')[1:] if lost in r)
    assert f'<s class="card-blocked" data-state="denied">{lost}</s>' in row and kept in row
    assert row.index(kept) < row.index(lost)  # the card to bring first
    assert f'data-state="revoked">{replaced}</s>' in html
    csv_rows = {r["card_ids"]: r for r in csv.DictReader(io.StringIO(client.get(
        "/audit/programme/export/pending.csv?cycle=20261").get_data(as_text=True)))}
    assert csv_rows[kept]["blocked_card_ids"] == f"{lost}:denied"
    assert csv_rows[""]["blocked_card_ids"] == f"{replaced}:revoked"


def test_pending_per_programme(app, programme, world):
    """``?programme=``: who has not had *this* programme (a household that took cash still owes a food visit)."""
    from server.dashboard import queries
    from server.extensions import db

    with app.app_context():
        cycle = queries.current_cycle(db.session, "20261")
        assert len(queries.pending(db.session, cycle)) == 2  # any programme counts as collected
        assert len(queries.pending(db.session, cycle, programme="food")) == 3  # + the cash-only household
        assert len(queries.pending(db.session, cycle, programme="cash")) == 4
        assert queries.programmes(db.session, cycle) == ["cash", "food"]
    client = world.client
    _login(client, "manny")
    page = client.get("/audit/programme/pending?cycle=20261&programme=food&lang=en")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and html.count('class="pending"') == 3
    assert 'programme=food' in html.split('id="export-pending"')[1].split(">")[0]  # the CSV keeps the filter
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/audit/programme/export/pending.csv?cycle=20261&programme=cash").get_data(as_text=True))))
    assert len(rows) == 4 and {r["programme"] for r in rows} == {"cash"}
    assert client.get("/audit/programme/pending?cycle=20261&programme=nope").status_code == 400
    overview = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert 'class="pending-programme" href="/audit/programme/pending?cycle=20261&amp;region=&amp;programme=food"' \
        in overview


def test_terminal_health_lists_counters_not_stations_and_offline_time_only_when_late(app, programme, world):
    """A provisioning station never uploads a journal: it is no "never uploaded" counter; an up-to-date
    counter has no "offline for" value."""
    from server.dashboard import queries
    from server.extensions import db
    from server.models import Terminal, TerminalStatus

    with app.app_context():
        session = db.write_session()
        session.add(Terminal(terminal_id="S-6271-0001", status=TerminalStatus.APPROVED, csr_der=b"csr",
                             public_key=b"spki", kid=b"\x5a\x5a\x5a\x5a"))
        session.commit()
        health = queries.terminal_health(db.session)
        assert "S-6271-0001" not in {h.terminal_id for h in health}
        assert [s.terminal_id for s in queries.stations(db.session)] == ["S-6271-0001"]
    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert "0 never uploaded" in html
    assert 'id="stations"' in html and "S-6271-0001" in html.split('id="stations"')[1]
    for row in html.split('<tr class="health"')[1:]:
        offline = row.split('data-label="Offline for">')[1].split("</td>")[0]
        assert (offline == "") == ('data-status="ok"' in row), row


def test_busiest_hour_names_the_hour_and_the_households(app, programme, world):
    """"Busiest hour" was the count alone (``2``), read as 2 o'clock: the WIB hour and the count are shown."""
    from server.dashboard import queries
    from server.extensions import db

    t71 = programme["district"].local_terminals("62.71")[0].terminal_id
    with app.app_context():
        speed = {t.terminal_id: t for t in queries.throughput(db.session, queries.current_cycle(db.session, "20261"))}
    assert (speed[t71].peak_hour, speed[t71].peak) == ("2026-03-02 08", 2)
    _login(world.client, "manny")
    for lang, words in (("id", "2 rumah tangga"), ("en", "2 households")):
        html = world.client.get(f"/audit/programme/?cycle=20261&lang={lang}").get_data(as_text=True)
        assert f"2026-03-02 08:00\u201309:00 WIB \u00b7 {words}" in html, html
