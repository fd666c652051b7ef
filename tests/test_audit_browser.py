"""The auditor view in headless Debian Chromium (selenium + /usr/bin/chromedriver) against waitress.

Login, findings queue, a confirmation with a reason, card history and a CSV
download, on SQLite and PostgreSQL, with no JavaScript on the pages.
"""

from __future__ import annotations

import csv
import datetime as dt
import time

import pytest

from server.reconcile.models import FindingKind, FindingStatus
from simulator.journals import District
from tests.reconcile_support import (  # noqa: F401 - audit_db is a fixture
    AUDITOR_PASSWORD,
    add_auditor,
    audit_db,
    findings,
    install,
    run,
    upload_all,
)

pytestmark = pytest.mark.browser
UTC = dt.timezone.utc
#: Seconds to wait for a page or a download.
WAIT_S = 20


def _follow(browser, element) -> None:  # noqa: ANN001 - selenium objects
    """Click a link or submit button and wait until the browser has loaded the next page.

    A click returns before a form POST's navigation completes; reading the URL or
    the DOM right after it races with the page load.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old_page = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def navigated(_driver) -> bool:  # noqa: ANN001 - selenium object
        # Chromium answers a query on a node of the page just left either with a stale
        # element error or, while the new document is being attached, with the inspector
        # error "Node with given id does not belong to the document": both mean "gone".
        try:
            old_page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, WAIT_S).until(navigated)


def _ms(h: int, m: int = 0) -> int:
    return int(dt.datetime(2026, 3, 2, h, m, tzinfo=UTC).timestamp() * 1000)


def test_auditor_logs_in_confirms_a_clone_reads_card_history_and_exports(app, audit_db, world, live_server,  # noqa: F811
                                                                          browser):
    from selenium.webdriver.common.by import By

    d = District.new(2, 3, seed=5, regions=["62.71", "62.01"])
    for t in d.terminals:
        t.boot(_ms(0, 30))
    card = d.cards[0]
    clone = card.clone(counter=1)
    d.terminals[0].redeem(card, _ms(2), "food", 150_000)
    d.terminals[1].redeem(clone, _ms(2, 30), "food", 150_000)
    install(app, world, d)
    upload_all(world, d)
    run(app)
    add_auditor(app)
    base = f"http://{live_server.host}:{live_server.port}"

    browser.get(f"{base}/audit/findings")
    assert "/audit/login" in browser.current_url
    browser.find_element(By.ID, "username").send_keys("audrey")
    browser.find_element(By.ID, "password").send_keys(AUDITOR_PASSWORD)
    _follow(browser, browser.find_element(By.ID, "login"))
    assert browser.current_url.endswith("/audit/findings")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Temuan"  # Bahasa Indonesia by default
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.finding")
    assert {r.get_attribute("data-kind") for r in rows} >= {"card_fork", "counter_backwards", "impossible_travel"}
    assert browser.execute_script("return document.scripts.length") == 0  # no JavaScript at all

    fork_row = next(r for r in rows if r.get_attribute("data-kind") == "card_fork")
    _follow(browser, fork_row.find_element(By.CSS_SELECTOR, "td a"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.evidence")) == 2
    browser.find_element(By.ID, "reason").send_keys("kartu klon disita di T-0001")
    _follow(browser, browser.find_element(By.ID, "confirm"))
    assert browser.find_element(By.ID, "finding-status").text == "dikonfirmasi"
    assert browser.find_element(By.ID, "finding-reason").text == "kartu klon disita di T-0001"
    fork = findings(app, FindingKind.CARD_FORK)[0]
    assert fork.status is FindingStatus.CONFIRMED and fork.reason == "kartu klon disita di T-0001"

    _follow(browser, browser.find_element(By.ID, "card-link"))
    browser.get(browser.current_url + "?lang=en")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Card {card.card_id}"
    taps = browser.find_elements(By.CSS_SELECTOR, "tr.tap")
    assert len(taps) == 4 and {"T-0000", "T-0001"} <= {t.find_elements(By.TAG_NAME, "td")[1].text for t in taps}
    assert browser.find_element(By.CSS_SELECTOR, "span.neg").text == "-150,000"

    _follow(browser, browser.find_element(By.LINK_TEXT, "Exports"))
    browser.find_element(By.ID, "export-findings-csv").click()
    target = browser.downloads / "findings.csv"
    deadline = time.monotonic() + WAIT_S
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.exists(), list(browser.downloads.iterdir())
    with target.open(encoding="utf-8", newline="") as fh:  # Chromium renames *.crdownload when complete
        exported = list(csv.DictReader(fh))
    assert {r["kind"] for r in exported} == {f.kind.value for f in findings(app)}
    assert any(r["kind"] == "card_fork" and r["status"] == "confirmed" for r in exported)

    _follow(browser, browser.find_element(By.ID, "logout"))
    browser.get(f"{base}/audit/findings")
    assert "/audit/login" in browser.current_url
