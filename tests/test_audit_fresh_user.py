"""What a fresh auditor, manager and technician met on the pages (SQLite and PostgreSQL): a search
for an id no card or household has links no household page, terminal health names the last upload,
the pending list shows the household's printed label, the redeemed-per-programme figure stands apart
from its pending link, and the card page shows the current cycle's entitlement and the card a
re-issue replaced.
"""

from __future__ import annotations

from typing import Any

from tests.reconcile_support import AUDITOR_PASSWORD, audit_db  # noqa: F401 - audit_db is a fixture
from tests.test_dashboard import programme  # noqa: F401 - programme is a fixture


def _login(client: Any, username: str = "audrey") -> Any:
    from tests.audit_login import form_login

    return form_login(client, username, AUDITOR_PASSWORD)


def test_a_search_for_an_unknown_id_links_no_household(app, programme, world):  # noqa: F811
    client = world.client
    _login(client)
    html = client.get("/audit/findings?status=all&q=deadbeefdeadbeef").get_data(as_text=True)
    assert "/audit/households/" not in html and 'id="lookup-household"' not in html
    assert 'id="lookup-unknown">Tidak ada kartu atau rumah tangga terdaftar dengan id ini.<' in html
    en = client.get("/audit/findings?status=all&q=deadbeefdeadbeef&lang=en").get_data(as_text=True)
    assert "No card or household with this id is registered." in en
    ref = next(iter(programme["refs"].values()))
    known = client.get(f"/audit/findings?status=all&q={ref}").get_data(as_text=True)
    assert f'href="/audit/households/{ref}" id="lookup-household"' in known and 'id="lookup-unknown"' not in known
    card = programme["by_region"]["62.71"][0].card_id
    assert 'id="lookup-unknown"' not in client.get(f"/audit/findings?q={card}").get_data(as_text=True)


def test_terminal_health_names_the_last_upload(app, programme, world):  # noqa: F811
    """The column is the newest journal upload received: a counter with no taps has none to send."""
    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/?cycle=20261").get_data(as_text=True)
    assert "<th>Unggahan terakhir</th>" in html and 'data-label="Unggahan terakhir"' in html
    assert "Sinkron terakhir" not in html and "sinkron" not in html.split('id="health-summary"')[1]
    en = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert "<th>Last upload</th>" in en and "Last sync" not in en and "never uploaded" in en
    _login(client)
    terminals = client.get("/audit/terminals?lang=en").get_data(as_text=True)
    assert "<th>Last upload</th>" in terminals and "Last sync" not in terminals


def test_pending_shows_the_printed_label_and_a_household_without_a_usable_card(app, programme, world):  # noqa: F811
    """Field workers know HB-XXXXXXXX (cards, letters), not 16 hex digits; '—' told them nothing."""
    import csv
    import datetime as dt
    import io

    from sqlalchemy import update

    from server.extensions import db
    from server.reconcile.models import CardProfile

    replaced = programme["by_region"]["62.71"][2].card_id  # its household has no other card
    with app.app_context():
        session = db.write_session()
        session.execute(update(CardProfile).where(CardProfile.card_id == replaced)
                        .values(revoked_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC), revoke_reason="lost"))
        session.commit()
    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/pending?cycle=20261").get_data(as_text=True)
    ref = programme["refs"][replaced]
    row = next(r for r in html.split('<tr class="pending"')[1:] if replaced in r)
    label = f"HB-{ref[:8].upper()}"  # the fixture's households share their first 8 hex digits: the ref is added
    assert f'title="{ref}"><span>{label} <small class="household-ref">{ref}</small></span></td>' in row
    assert 'class="needs-reissue">perlu kartu pengganti dari kantor kabupaten<' in row and "—" not in row
    en = client.get("/audit/programme/pending?cycle=20261&lang=en").get_data(as_text=True)
    assert "needs a re-issue at the district office" in en
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/audit/programme/export/pending.csv?cycle=20261").get_data(as_text=True))))
    assert {(r["household_ref"], r["household_label"]) for r in rows} >= {(ref, f"HB-{ref[:8].upper()}")}
    assert all(r["household_label"] == "HB-" + r["household_ref"][:8].upper() for r in rows)


def test_a_card_without_a_household_has_no_label():
    from server.dashboard.queries import PendingHousehold
    from server.dashboard.views import pending_label

    assert pending_label(PendingHousehold("9f3c2a1b00000001", "62.71", ("0011223344556677",))) == "HB-9F3C2A1B"
    assert pending_label(PendingHousehold("0011223344556677", "62.71", ("0011223344556677",))) == ""
    assert pending_label(PendingHousehold("0011223344556677", "62.71", (), {"0011223344556677": "revoked"})) == ""


def test_redeemed_per_programme_keeps_the_total_apart_from_the_pending_link(app, programme, world):  # noqa: F811
    """'Paket pangan · belum mengambil … 6 paket' read as '6 packages not collected' (6 was the total)."""
    import re

    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/?cycle=20261").get_data(as_text=True)
    table = html.split('id="amounts"')[1].split("</table>")[0]
    assert "<th>Program</th>" in table and "Total ditukar</th>" in table and "<th>Belum mengambil</th>" in table
    food = next(r for r in table.split("<tr>")[1:] if 'data-programme="food"' in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", food, re.S)
    assert cells[0] == "Paket pangan" and cells[1] == "300.000"  # 2 × 150.000 in the fixture's units
    link_text = cells[2].split(">")[-2]
    assert link_text == "rumah tangga yang belum mengambil Paket pangan</a" and not re.search(r"\d", link_text)
    en = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert ">households that have not collected Food package</a>" in en and "Total redeemed</th>" in en


def test_shown_cycle_is_the_running_one_else_the_latest_begun():
    import datetime as dt

    from server.audit.views import shown_cycle

    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)  # 20262
    assert shown_cycle(["20261", "20262", "20271"], now) == "20262"
    assert shown_cycle(["20252", "20261", "20281"], now) == "20261"
    assert shown_cycle(["20271", "20272"], now) == "20271" and shown_cycle([], now) is None


def test_card_page_shows_one_cycle_and_names_the_card_a_reissue_replaced(app, programme, world):  # noqa: F811
    import datetime as dt

    from sqlalchemy import select, update

    from server.extensions import db
    from server.models import Card, Person
    from server.reconcile.models import CardEntitlement
    from server.registry import ensure_cycles

    old, new = (c.card_id for c in programme["by_region"]["62.71"][:2])
    with app.app_context():
        session = db.write_session()
        ensure_cycles(session, [20251, 20252, 20991])
        base = session.scalars(select(CardEntitlement).where(CardEntitlement.card_id == old)).all()
        assert {e.cycle_id for e in base} == {"20261"}
        for cycle in ("20251", "20252", "20991"):  # issued years ahead, as a long-lived card is
            session.add_all(CardEntitlement(card_id=old, programme=e.programme, cycle_id=cycle, amount=e.amount,
                                            programme_id=e.programme_id, unit=e.unit) for e in base)
        tech = session.scalar(select(Person.id).where(Person.username == "manny"))  # any person: the FK
        issued = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
        session.add_all([Card(card_id=old, tag_uid=bytes(7), kid=bytes(4), technician_id=tech, issued_at=issued),
                         Card(card_id=new, tag_uid=bytes(6) + b"\x01", kid=bytes(4), technician_id=tech,
                              issued_at=issued + dt.timedelta(days=2), reissue_of=old)])
        session.commit()
    client = world.client
    _login(client)
    html = client.get(f"/audit/cards/{old}?lang=en").get_data(as_text=True)
    line = html.split('id="entitlement">')[1].split("</p>")[0]
    assert line.startswith("Entitlement 2026 semester 1: ") and "2025" not in line and "2099" not in line
    details = html.split('<details id="other-entitlements">')[1].split("</details>")[0]
    assert "Other cycles (3)" in details and details.count("<li>") == 3 and "2099 semester 1" in details
    assert f'id="replaced-by">Replaced by card <a class="mono" href="/audit/cards/{new}">{new}</a>' in html
    assert 'id="replaces"' not in html
    page = client.get(f"/audit/cards/{new}?lang=id").get_data(as_text=True)
    assert f'id="replaces">Kartu pengganti untuk kartu <a class="mono" href="/audit/cards/{old}">{old}</a>' in page
    assert "<details" not in page.split('id="entitlement"')[1].split("<h2>")[0]  # one cycle: nothing folded
    with app.app_context():
        session = db.write_session()
        session.execute(update(Card).where(Card.card_id == new).values(reissue_of="00000000000000ff"))
        session.commit()
    unknown = client.get(f"/audit/cards/{new}").get_data(as_text=True)
    assert '<span class="mono">00000000000000ff</span>' in unknown and "/audit/cards/00000000000000ff" not in unknown
