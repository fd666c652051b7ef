"""The settled torn writes page in headless Debian Chromium at phone and desktop widths.

From a card's history to its settlements and on to the terminal's, with no JavaScript on the
pages, no horizontal overflow from 360 to 1366 px, phone and desktop screenshots saved as
docs/screenshots/settlements-{phone,desktop}.png (SQLite run). SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.browser import PHONE
from tests.reconcile_support import audit_db  # noqa: F401 - a fixture
from tests.test_audit_browser import _follow
from tests.test_dashboard_browser import DESKTOP, _log_in, _no_overflow, _shot, _viewport
from tests.test_registry_reconcile import keys, registry  # noqa: F401 - fixtures
from tests.test_settlements_audit import settled  # noqa: F401 - a fixture

pytestmark = pytest.mark.browser


def test_an_auditor_reads_settled_torn_writes_from_card_to_terminal_on_a_phone_and_a_desktop(
        app: Any, db_url: str, settled: dict[str, Any], live_server: Any, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    a = settled["a"]
    base = f"http://{live_server.host}:{live_server.port}"
    for width, height in (PHONE, DESKTOP):
        _viewport(browser, width, height)
        _log_in(browser, base, "audrey")
        browser.get(f"{base}/audit/cards/{a.card_id.hex()}")
        _follow(browser, browser.find_element(By.ID, "settlements-link"))
        assert browser.current_url.endswith(f"/audit/settlements?card_id={a.card_id.hex()}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Penulisan kartu terputus yang sudah diputuskan"
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.settlement")
        assert [r.get_attribute("data-outcome") for r in rows] == ["taken"]
        assert "diambil" in rows[0].text and a.household_ref.hex() in rows[0].text
        assert rows[0].is_displayed() and rows[0].rect["width"] <= width
        assert browser.execute_script("return document.scripts.length") == 0
        _no_overflow(browser, f"settlements of a card at {width} px")

        _follow(browser, rows[0].find_element(By.LINK_TEXT, "T-PKY-0041"))
        _follow(browser, browser.find_element(By.ID, "settlements-link"))
        assert browser.current_url.endswith("/audit/settlements?terminal_id=T-PKY-0041")
        browser.get(browser.current_url + "&lang=en")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.settlement")
        assert [r.get_attribute("data-outcome") for r in rows] == ["taken", "not_taken"]
        assert "not taken" in rows[1].text
        _no_overflow(browser, f"settlements of a terminal at {width} px")
        browser.delete_all_cookies()
    _shot(browser, "settlements", db_url.split(":")[0])
