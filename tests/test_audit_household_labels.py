"""Audit pages name a household by the label clerks use (``HB-XXXXXXXX``, printed on cards and letters)
beside its 16-hex reference: the copied-cards list, the household page's title, the grievance list and
the card page. Before, only the reference was shown, which no clerk at a counter or office knows.
"""

from __future__ import annotations

from typing import Any

from cardlib.records.household_label import household_label
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_audit_copy_attempts import HOUSEHOLD, _login, copy_world  # noqa: F401 - copy_world: fixture

LABEL = household_label(bytes.fromhex(HOUSEHOLD))


def test_household_label_beside_the_reference(app: Any, copy_world: dict[str, Any], world: Any) -> None:  # noqa: F811
    r = world.client.post("/api/v1/grievances", headers=world.auth(),
                          json={"text": "kartu saya ditolak", "household_ref": HOUSEHOLD})
    assert r.status_code == 201, r.get_json()
    _login(world.client)
    for lang in ("id", "en"):
        declines = world.client.get(f"/audit/declines?lang={lang}").get_data(as_text=True)
        household = world.client.get(f"/audit/households/{HOUSEHOLD}?lang={lang}").get_data(as_text=True)
        grievances = world.client.get(f"/audit/grievances?lang={lang}").get_data(as_text=True)
        card = world.client.get(f"/audit/cards/{copy_world['card'].card_id}?lang={lang}").get_data(as_text=True)
        assert f"{LABEL}</strong> <span class=\"mono\">{HOUSEHOLD}</span>" in declines, declines
        title = household[household.index("<title>"):household.index("</title>")]
        h1 = household[household.index("<h1>"):household.index("</h1>")]
        assert LABEL in title and LABEL in h1 and HOUSEHOLD in h1, (title, h1)
        assert LABEL in grievances and f'href="/audit/households/{HOUSEHOLD}"' in grievances, grievances
        assert LABEL in card and f'href="/audit/households/{HOUSEHOLD}"' in card, card
