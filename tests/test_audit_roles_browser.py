"""The auditor menu with its settlements link, the findings search's links and a manager's 403 page
in headless Debian Chromium: nothing wider than the screen from 360 to 1366 px, no JavaScript.
"""

from __future__ import annotations

import pytest

from tests.test_audit_browser import _follow, browser  # noqa: F401 - browser is a fixture
from tests.test_dashboard import audit_db, programme  # noqa: F401 - fixtures
from tests.test_dashboard_browser import PHONE, _log_in, _no_overflow, _viewport

pytestmark = pytest.mark.browser


def test_search_links_menu_and_403_fit_a_phone_and_a_desktop(
        app, db_url, programme, live_server, browser):  # noqa: F811 - fixtures
    from selenium.webdriver.common.by import By

    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, *PHONE)
    _log_in(browser, base, "audrey")
    card = programme["by_region"]["62.71"][2].card_id
    browser.get(f"{base}/audit/findings?q={card}")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.find_element(By.ID, "nav-settlements").get_attribute("href").endswith("/audit/settlements")
    link = browser.find_element(By.CLASS_NAME, "lookup-card")
    assert link.text == card and link.is_displayed()
    _no_overflow(browser, "findings search")
    _follow(browser, link)
    assert browser.current_url.endswith(f"/audit/cards/{card}")
    _follow(browser, browser.find_element(By.ID, "logout"))
    _log_in(browser, base, "manny")
    browser.get(f"{base}/audit/findings")
    assert browser.find_element(By.ID, "nav-dashboard").is_displayed()
    assert "manajer program" in browser.find_element(By.ID, "error-detail").text
    _no_overflow(browser, "a manager's 403 page")
    _viewport(browser, *PHONE)
    browser.get(f"{base}/audit/")
    assert browser.current_url.endswith("/audit/programme/")
