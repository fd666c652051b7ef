"""What a fresh auditor and programme manager met on the pages (SQLite and PostgreSQL): each role's
start page behind ``/audit/``, a 403 inside the page frame, error details and role names in the
page's language, the login refusal naming the roles that may log in, the settlements page in the
menu, programme display names and the cycles offered on the dashboard, ``/`` for a browser, and
the findings search linking the card, terminal and household a text names.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from babel.messages.pofile import read_po

from tests.reconcile_support import AUDITOR_PASSWORD, audit_db  # noqa: F401 - audit_db is a fixture
from tests.test_dashboard import add_person, programme  # noqa: F401 - programme is a fixture

UTC = dt.UTC
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def _login(client: Any, username: str) -> Any:
    from tests.audit_login import form_login

    return form_login(client, username, AUDITOR_PASSWORD)


def test_audit_start_page_sends_each_role_home_and_a_403_keeps_the_menu(app, programme, world):  # noqa: F811
    client = world.client
    assert _login(client, "manny").status_code == 302
    r = client.get("/audit/")  # the URL docs/operations.md gives: was a bare 403 for a manager
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/programme/")
    denied = client.get("/audit/findings")  # a page a manager may not use: 403 in the page frame
    html = denied.get_data(as_text=True)
    assert denied.status_code == 403
    assert 'id="nav-dashboard"' in html and 'id="logout"' in html
    assert "peran manajer program tidak boleh memakai halaman ini" in html
    assert "may not use this page" not in html and 'lang="en"' not in html.split("<main>")[1]
    assert 'id="nav-findings"' not in html and 'id="nav-settlements"' not in html
    en = client.get("/audit/findings?lang=en").get_data(as_text=True)
    assert "the role programme manager may not use this page" in en
    auditor = app.test_client()
    assert _login(auditor, "audrey").status_code == 302
    r = auditor.get("/audit/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/findings")


def test_error_details_are_in_the_page_language(app, programme, world):  # noqa: F811
    client = world.client
    _login(client, "audrey")
    r = client.get("/audit/cards/nothex")
    html = r.get_data(as_text=True)
    assert r.status_code == 404 and "tidak ada kartu &#39;nothex&#39;" in html and "no card" not in html
    assert 'id="error-detail">' in html  # not marked lang="en": it is Indonesian now
    bad = client.get("/audit/findings?bogus=1").get_data(as_text=True)
    assert "parameter kueri tidak dikenal: bogus; yang diizinkan:" in bad
    page = client.get("/audit/findings?page=x").get_data(as_text=True)
    assert "page harus bilangan bulat dari 0 sampai" in page
    cycle = client.get("/audit/programme/?cycle=19991").get_data(as_text=True)
    assert "tidak ada siklus &#39;19991&#39;" in cycle
    assert "no card &#39;nothex&#39;" in client.get("/audit/cards/nothex?lang=en").get_data(as_text=True)


def test_every_error_shape_has_an_indonesian_translation_with_the_same_fields():
    from importlib import resources

    from server.audit.i18n import PROGRAMME_NAMES
    from server.audit.messages import ROLE_NAMES, SHAPES, translate_message

    po = resources.files("server.audit").joinpath("locale", "id", "LC_MESSAGES", "audit.po")
    with po.open("rb") as fh:
        catalogue = read_po(fh, locale="id")
    field = re.compile(r"%\((\w+)\)s")
    for msgid in [m for _p, m in SHAPES] + list(ROLE_NAMES.values()) + list(PROGRAMME_NAMES.values()):
        message = catalogue.get(msgid)
        assert message is not None and message.string, msgid
        assert sorted(field.findall(message.string)) == sorted(field.findall(msgid)), msgid
    assert translate_message("something new went wrong", str) is None  # unknown shape: shown as raised


def test_a_technicians_refusal_names_the_roles_that_may_log_in(app, programme, world):  # noqa: F811
    add_person(app, "tess", "technician")
    r = _login(world.client, "tess")
    html = r.get_data(as_text=True)
    assert r.status_code == 403
    assert "Hanya auditor, manajer program, dan administrator yang boleh masuk di sini." in html
    assert "Hanya auditor yang boleh memakai tampilan ini" not in html


def test_settlements_are_in_the_auditor_menu(app, programme, world):  # noqa: F811
    client = world.client
    _login(client, "audrey")
    html = client.get("/audit/findings").get_data(as_text=True)
    assert 'href="/audit/settlements" id="nav-settlements"' in html
    assert client.get("/audit/settlements").status_code == 200


def test_dashboard_names_programmes_and_offers_no_far_future_cycle(app, programme, world):  # noqa: F811
    from cardlib.records.claims import cycle_bounds
    from server.dashboard import queries
    from server.extensions import db
    from server.registry import ensure_cycles

    client = world.client
    _login(client, "manny")
    html = client.get("/audit/programme/?cycle=20261").get_data(as_text=True)
    assert 'data-programme="food">Paket pangan' in html and 'data-programme="cash">Bantuan tunai' in html
    en = client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert 'data-programme="food">Food package' in en
    with app.app_context():
        session = db.write_session()
        ensure_cycles(session, [20252, 20262, 20271, 20272, 20281, 20282])  # entitlements issued years ahead
        session.commit()
        now = cycle_bounds(20262)[0] + dt.timedelta(days=30)
        shown = queries.current_cycle(db.session, now=now)
        listed = [c.cycle_id for c in queries.listed_cycles(db.session, shown, now=now)]
        assert shown.cycle_id == "20262" and listed == ["20271", "20262", "20261", "20252"]
        far = queries.current_cycle(db.session, "20282")  # asked for: stays selectable
        assert [c.cycle_id for c in queries.listed_cycles(db.session, far, now=now)][:2] == ["20282", "20271"]
    page = client.get("/audit/programme/?cycle=20261").get_data(as_text=True)
    offered = re.findall(r'<option value="(\d{5})"', page)
    assert offered == sorted(offered, reverse=True) and "20282" not in offered and "20281" not in offered


def test_root_sends_a_browser_to_the_login_and_keeps_json_for_clients(app, world):
    client = world.client
    r = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 302 and r.headers["Location"].endswith("/audit/") and "Accept" in r.headers["Vary"]
    for accept in (None, "application/json", "*/*"):
        r = client.get("/", headers={"Accept": accept} if accept else {})
        assert r.status_code == 404 and r.mimetype == "application/json", accept
        assert r.get_json()["error"]["code"] == "not_found"
    assert client.post("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 405


def test_findings_search_links_the_card_household_and_receipt_it_names(app, programme, world):  # noqa: F811
    from sqlalchemy import select, update

    from cardlib.records.journal import EntryKind
    from cardlib.records.receipt import receipt_code
    from server.extensions import db
    from server.models import JournalEntryRow
    from server.reconcile.models import CardProfile

    client = world.client
    _login(client, "audrey")
    quiet = programme["by_region"]["62.71"][2]  # no tap, no finding
    html = client.get(f"/audit/findings?q={quiet.card_id}").get_data(as_text=True)
    assert f'class="lookup-card" href="/audit/cards/{quiet.card_id}"' in html
    with app.app_context():
        session = db.write_session()
        session.execute(update(CardProfile).where(CardProfile.card_id == quiet.card_id)
                        .values(household_ref="0123456789abcdef"))
        session.commit()
        j = JournalEntryRow
        row = db.session.execute(select(j.entry_hash, j.card_id, j.terminal_id)
                                 .where(j.kind == int(EntryKind.COMMIT), j.programme == "cash")).one()
    by_label = client.get("/audit/findings?q=hb-01234567").get_data(as_text=True)  # the printed label
    assert 'id="lookup-household">0123456789abcdef<' in by_label
    assert f'href="/audit/cards/{quiet.card_id}"' in by_label
    ambiguous = client.get("/audit/findings?q=HB-9F3C2A1B").get_data(as_text=True)  # five households
    assert 'id="lookup"' not in ambiguous  # a label that fits several households names none of them
    code = receipt_code(row.entry_hash)
    by_code = client.get(f"/audit/findings?q={code.replace('-', '').lower()}").get_data(as_text=True)
    assert f"Kode bukti {code}" in by_code
    assert f'href="/audit/cards/{row.card_id}"' in by_code and f'href="/audit/terminals/{row.terminal_id}"' in by_code
