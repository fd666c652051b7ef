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
