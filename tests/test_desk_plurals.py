"""Counts read at the district office's desk in the right number: ``huma server household show``
("4 of 4 visits left", not "4 of 4 visit left") and the programme dashboard's totals in both
languages ("7 packages" / "7 paket", not "7 package")."""

from __future__ import annotations

from typing import Any

import server.cli  # noqa: F401 - first: server.cli imports household_cli (an import cycle)
from server.household_cli import entitlement_text
from tests.reconcile_support import audit_db  # noqa: F401 - fixture
from tests.test_dashboard import _login, programme  # noqa: F401 - programme: fixture


def test_household_show_counts_its_units() -> None:
    assert entitlement_text(1, "package") == "1 package"
    assert entitlement_text(4, "visit") == "4 visits"
    assert entitlement_text(0, "package") == "0 packages"
    assert entitlement_text(250_000, "rupiah") == "250000 rupiah"  # not a counted noun
    assert entitlement_text(3, None) == "3"


def test_dashboard_totals_in_both_languages(app: Any, programme: dict[str, Any], world: Any) -> None:  # noqa: F811
    from sqlalchemy import update

    from server.extensions import db
    from server.reconcile.models import CardEntitlement

    with app.app_context():  # the fixture's food programme counted in packages, as the province's is
        session = db.write_session()
        session.execute(update(CardEntitlement).where(CardEntitlement.programme == "food").values(unit="package"))
        session.commit()
    _login(world.client, "manny")
    en = world.client.get("/audit/programme/?cycle=20261&lang=en").get_data(as_text=True)
    assert "300,000 packages" in en and "300,000 package<" not in en
    ind = world.client.get("/audit/programme/?cycle=20261&lang=id").get_data(as_text=True)
    assert "300.000 paket<" in ind and "Rp250.000" in ind
