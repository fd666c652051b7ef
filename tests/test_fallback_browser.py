"""The counter page's fallback panels in headless Chromium (docs/fallback.md): a USB scanner types
the household QR text and Enter into the QR field; a supervisor types a card id and password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cardlib.records.household_label import household_label
from cardlib.records.journal import EntryKind
from terminal.journal_store import JournalStore
from tests.test_fallback import _qr_from_png, counter  # noqa: F401 - fixture
from tests.test_records_support import identity

pytestmark = pytest.mark.browser(hide_scrollbars=True)


def _ack(driver: Any, form: str) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d: Any) -> str | bool:
        text: str = d.find_element("css selector", f"#{form} .ack").text
        return text or False

    return str(WebDriverWait(driver, 20, poll_frequency=0.05).until(done))


def test_scanner_and_supervisor_panels_post_and_show_the_result(
        browser: Any, counter: tuple[str, JournalStore], tmp_path: Path) -> None:  # noqa: F811 - fixtures
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, journal = counter
    browser.get(url + "?lang=en")
    browser.find_element("css selector", "#fallback > summary").click()
    browser.find_element("id", "clerk").send_keys("clerk-ani")
    browser.find_element("id", "qr").send_keys(_qr_from_png() + Keys.ENTER)  # what a USB scanner does
    assert _ack(browser, "qrform") == "Served: see the result"
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "headline").text == "ACCEPTED")
    assert browser.find_element("id", "household").text == household_label(identity().household_ref)
    assert browser.find_element("id", "qr").get_attribute("value") == ""  # ready for the next scan

    browser.find_element("id", "mcard").send_keys(identity().card_id.hex())
    browser.find_element("id", "msup").send_keys("sri")
    browser.find_element("id", "mpass").send_keys("tebakan" + Keys.ENTER)
    assert _ack(browser, "manualform") == "Refused: see the result"
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "headline").text == "DECLINED")
    assert "Supervisor id or password not accepted" in browser.find_element("id", "reason").text
    assert browser.find_element("id", "mpass").get_attribute("value") == ""  # never left in the field

    browser.get(url)  # Indonesian by default
    assert "Cadangan" in browser.find_element("css selector", "#fallback > summary").text
    entries = [(s.entry.kind, s.entry.fallback, s.entry.approved_by) for s in journal.entries()
               if s.entry.kind is not EntryKind.BOOT]
    assert entries == [(EntryKind.FALLBACK, "qr", "clerk-ani"), (EntryKind.DECLINED, "manual", "sri")]
