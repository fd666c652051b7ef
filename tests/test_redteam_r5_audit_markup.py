"""Red team r5: markup in a signed decline reason reaches the auditor's pages unescaped.

A dishonest technician (or anyone holding a counter's key: an insider with root on it) journals a
DECLINED entry whose signed reason is not one of the counter's codes but HTML. The auditor pages show
a decline reason through ``{{ _(r) }}`` (6702335: reasons in words); with Jinja's new-style gettext
and autoescaping the *translation* is marked safe, and an unknown reason "translates" to itself, so
the markup went into the page as is. The pages' CSP forbids scripts, not a ``<base href>`` (every
relative link of the page then leads to the attacker's host: a copy of the login form), a ``<meta
refresh>`` or a ``<form action=...>`` posting elsewhere; and a reason holding ``%(x)s`` made the
page answer 500 (the new-style ``_()`` formats its result), so a counter could hide a card's or its
own journal page from the auditor. Decline reasons now go through the ``reason`` filter
(server/audit/i18n.py): a known code in words, anything else as escaped text, never formatted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from cardlib.records.journal import EntryKind
from simulator.journals import District
from tests.reconcile_support import add_auditor, audit_db, install, run, upload_all  # noqa: F401 - audit_db

UTC = dt.UTC
#: At most 32 characters (a journal's text claims): markup, and a format placeholder.
REASONS = ["<base href=//evil.example/>", "%(x)s"]


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(params=REASONS)
def hostile(request: Any, app: Any, audit_db: str, world: Any) -> dict[str, Any]:  # noqa: F811 - fixture
    d = District.new(1, 2, seed=29, regions=["62.71"])
    t = d.terminals[0]
    t.boot(_ms(0, 30))
    card = d.cards[0]
    t.redeem(card, _ms(1), "food", 150_000)
    t.append(EntryKind.DECLINED, _ms(2), card_id=card.card_id, tag_uid=card.tag_uid, programme="food",
             decline_reason=request.param)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    add_auditor(app)
    return {"terminal": t, "card": card, "reason": request.param}


@pytest.mark.parametrize("lang", ["en", "id"])
def test_a_decline_reason_is_text_not_markup_on_the_auditor_pages(app, hostile, world, lang):
    from tests.audit_login import form_login
    from tests.reconcile_support import AUDITOR_PASSWORD

    client = world.client
    assert form_login(client, "audrey", AUDITOR_PASSWORD).status_code == 302
    for path in (f"/audit/terminals/{hostile['terminal'].terminal_id}", f"/audit/cards/{hostile['card'].card_id}"):
        r = client.get(f"{path}?lang={lang}")
        assert r.status_code == 200, path
        html = r.get_data(as_text=True)
        assert "<base " not in html, (path, lang)
        csp = r.headers["Content-Security-Policy"]  # and markup that slipped through could not redirect links
        assert "base-uri 'none'" in csp and "form-action 'self'" in csp
        shown = hostile["reason"].replace("<", "&lt;").replace(">", "&gt;")
        assert f'class="decline">{shown}<' in html, (path, lang)  # shown as text
