"""The programme dashboard and the auditor pages in headless Debian Chromium at phone and desktop widths.

Every page is checked for horizontal overflow (``scrollWidth <= innerWidth``) at 360, 390,
414, 674, 1024 and 1366 px, for no JavaScript, and for its key content; the phone (390x844)
and desktop (1366x900) views are saved to docs/screenshots/ (from the SQLite run).
"""

from __future__ import annotations

from typing import Any

import pytest

from server.reconcile.models import FindingKind, FindingStatus
from tests.fixtures.browser import PHONE, SHOTS, viewport
from tests.reconcile_support import findings, run, upload_all
from tests.test_audit_browser import _follow
from tests.test_dashboard import AUDITOR_PASSWORD, _ms, audit_db, programme  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser
DESKTOP = (1366, 900)
#: Widths checked for overflow: phones 360-414 px, small tablets/landscape 674-1024 px, a laptop.
WIDTHS = (360, 390, 414, 674, 1024, 1366)
#: Tallest screenshot kept (px); longer pages are cut there.
SHOT_MAX_HEIGHT = 3200


def _viewport(browser: Any, width: int, height: int) -> None:
    viewport(browser, width, height, mobile=width < 700)


def _no_overflow(browser: Any, what: str) -> None:
    """At every width of :data:`WIDTHS`: nothing wider than the viewport."""
    for width in WIDTHS:
        _viewport(browser, width, 900)
        browser.execute_script("return document.body.offsetHeight")  # layout at the new width
        # against the width set, not window.innerWidth: a mobile viewport zooms out to a wider page
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= width, f"{what}: {scroll} px wide at a {width} px viewport"


def _shot(browser: Any, name: str, db: str) -> None:
    """Save the page at phone and desktop size (full height, at most :data:`SHOT_MAX_HEIGHT`)."""
    if db != "sqlite":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("phone", PHONE), ("desktop", DESKTOP)):
        _viewport(browser, width, height)
        full = browser.execute_script("return document.documentElement.scrollHeight")
        _viewport(browser, width, min(max(full, height), SHOT_MAX_HEIGHT))
        browser.save_screenshot(str(SHOTS / f"{name}-{label}.png"))
    _viewport(browser, *DESKTOP)


def _images_loaded(browser: Any) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")


def _log_in(browser: Any, base: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/audit/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(AUDITOR_PASSWORD)
    _follow(browser, browser.find_element(By.ID, "login"))


def test_dashboard_for_a_manager_on_a_phone_and_a_desktop(
        app, db_url, programme, live_server, browser):  # noqa: F811 - fixtures
    from selenium.webdriver.common.by import By

    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, *PHONE)
    _log_in(browser, base, "manny")
    assert browser.current_url.endswith("/audit/programme/")
    browser.get(f"{base}/audit/programme/?cycle=20261")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.find_element(By.ID, "cycle-name").text == "Semester I 2026"
    assert browser.find_element(By.ID, "total-expected").text == "5"
    assert browser.find_element(By.ID, "total-share").text == "60%"
    regions = {r.get_attribute("data-region") for r in browser.find_elements(By.CSS_SELECTOR, "tr.region")}
    assert regions == {"62.03", "62.71"}
    assert "Rp550.000" not in browser.page_source and "Rp250.000" in browser.page_source
    assert _images_loaded(browser) == []  # the three pygal charts
    for cell in browser.find_elements(By.CSS_SELECTOR, "tr.region td[data-label='%']"):  # a phone stacks cells
        value = cell.find_element(By.CSS_SELECTOR, ".share-value")
        assert value.rect["y"] - cell.rect["y"] < value.rect["height"], "the % value sits on its label's row"
    assert not browser.find_elements(By.ID, "nav-findings")  # a manager sees no auditor page
    _no_overflow(browser, "dashboard")
    _shot(browser, "dashboard", db_url.split(":")[0])

    browser.get(f"{base}/audit/programme/?cycle=20261&region=62.71&lang=en")
    assert browser.find_element(By.ID, "dashboard-title").text == "Programme progress · Kota Palangka Raya"
    assert browser.find_element(By.ID, "cycle-name").text == "2026 semester 1"
    assert [r.get_attribute("data-region") for r in browser.find_elements(By.CSS_SELECTOR, "tr.region")] == [
        "62.71.01"]
    assert _images_loaded(browser) == []
    _no_overflow(browser, "district dashboard")
    _shot(browser, "dashboard-regency-en", db_url.split(":")[0])

    browser.get(f"{base}/audit/programme/pending?cycle=20261&lang=id")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.pending")) == 2
    _no_overflow(browser, "pending households")
    _shot(browser, "pending", db_url.split(":")[0])


def test_auditor_queue_bulk_decision_and_finding_on_a_phone(
        app, db_url, programme, world, live_server, browser):  # noqa: F811 - fixtures
    from selenium.webdriver.common.by import By

    d = programme["district"]
    card = programme["by_region"]["62.71"][2]
    d.local_terminals("62.71")[0].redeem(card, _ms(4, 2), "food", 150_000)
    d.local_terminals("62.03")[0].redeem(card.clone(counter=1), _ms(4, 2, 20), "food", 150_000)
    upload_all(world, d)  # the earlier entries again are duplicates
    run(app)
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, *PHONE)
    _log_in(browser, base, "audrey")
    assert browser.current_url.endswith("/audit/findings")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Temuan"
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.finding")
    assert rows and browser.execute_script("return document.scripts.length") == 0
    _no_overflow(browser, "findings queue")
    _shot(browser, "findings", db_url.split(":")[0])

    # bulk: two findings, one reason
    picks = browser.find_elements(By.CSS_SELECTOR, "input.pick")[:2]
    chosen = [int(p.get_attribute("value")) for p in picks]
    for p in picks:
        p.click()
    browser.find_element(By.ID, "bulk-reason").send_keys("diperiksa di lapangan")
    _follow(browser, browser.find_element(By.ID, "bulk-dismiss"))
    decided = {f.id: f for f in findings(app)}
    assert all(decided[i].status is FindingStatus.DISMISSED and decided[i].reason == "diperiksa di lapangan"
               for i in chosen)

    browser.get(f"{base}/audit/findings?status=all&q={card.card_id}")
    hits = browser.find_elements(By.CSS_SELECTOR, "tr.finding")
    assert hits and all(card.card_id in h.text for h in hits)
    travel = findings(app, FindingKind.IMPOSSIBLE_TRAVEL)[0]
    browser.get(f"{base}/audit/findings/{travel.id}")
    assert " km dalam " in browser.find_element(By.ID, "finding-summary").text  # Indonesian summary
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.evidence")) == 2
    _no_overflow(browser, "finding")
    _shot(browser, "finding", db_url.split(":")[0])

    browser.get(f"{base}/audit/cards/{card.card_id}")
    _no_overflow(browser, "card history")
    browser.get(f"{base}/audit/programme/?cycle=20261")
    assert browser.find_elements(By.ID, "nav-findings")  # an auditor has both
    _no_overflow(browser, "dashboard (auditor)")

