"""The counter page at phone (and wider) widths in headless Chromium, with the fallback panel open and a fallback
result shown (docs/terminal.md §At the counter, docs/fallback.md): every value is readable, nothing is
cut off at the right, and a refused fallback looks like a refusal. Widths are measured in the browser."""

from __future__ import annotations

from typing import Any

import pytest

from cardlib.records.household_label import household_label
from terminal.journal_store import JournalStore
from tests.fixtures.browser import viewport
from tests.test_fallback import _qr_from_png, counter  # noqa: F401 - fixture
from tests.test_fallback_browser import _ack
from tests.test_records_support import identity

pytestmark = pytest.mark.browser(hide_scrollbars=True)

#: Narrowest a value of the result panel may be: "Rp250.000" or "1 paket pangan" on one or two lines.
MIN_VALUE_PX = 100
#: A small Android phone, the iPhone 12-15 viewport, just above the page's 600 px phone layout, a desktop (CSS px).
WIDTHS = (360, 390, 640, 1280)


def _width(driver: Any, width: int) -> None:
    viewport(driver, width, 844 if width < 600 else 900, mobile=width < 600)


def _overflow(driver: Any) -> list[str]:
    """What sticks out to the right of the viewport: the page's own width, then every visible element."""
    return [str(x) for x in driver.execute_script("""
        var vw = document.documentElement.clientWidth, out = [];
        if (document.documentElement.scrollWidth > vw) { out.push("page " + document.documentElement.scrollWidth); }
        document.querySelectorAll("body *").forEach(function (e) {
          var r = e.getBoundingClientRect();
          if (r.width > 0 && r.right > vw + 0.5) { out.push((e.id || e.tagName) + " " + Math.round(r.right)); }
        });
        return out;""")]


def _values(driver: Any) -> dict[str, float]:
    """Width in CSS pixels of every shown value (``dd``) of the result panel, by id."""
    return {str(k): float(v) for k, v in driver.execute_script("""
        var out = {};
        document.querySelectorAll("#facts dd").forEach(function (dd) {
          if (!dd.hidden) { out[dd.id] = dd.getBoundingClientRect().width; }
        });
        return out;""").items()}


@pytest.mark.parametrize("lang", ["id", "en"])
@pytest.mark.parametrize("width", WIDTHS)
def test_fallback_panel_and_result_fit_the_screen(browser: Any, counter: tuple[str, JournalStore],  # noqa: F811
                                               width: int, lang: str) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = counter
    _width(browser, width)
    browser.get(f"{url}?lang={lang}")
    browser.find_element("css selector", "#fallback > summary").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element("id", "qr").is_displayed())
    assert _overflow(browser) == []  # the QR legend and "Serve on QR" were cut off (page 451 px at 390)
    browser.find_element("id", "clerk").send_keys("clerk-ani")
    browser.find_element("id", "qr").send_keys(_qr_from_png() + Keys.ENTER)
    accepted = {"id": "DITERIMA", "en": "ACCEPTED"}[lang]
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "headline").text == accepted)
    assert browser.find_element("id", "household").text == household_label(identity().household_ref)
    values = _values(browser)
    assert set(values) == {"household", "prog", "hand_over", "remaining", "receipt"}
    # one letter per line before: dd#prog was 21 px wide beside "Sisa jatah cadangan periode ini"
    assert min(values.values()) >= MIN_VALUE_PX, values
    assert _overflow(browser) == []


def test_a_refused_fallback_looks_like_a_refusal(browser: Any, counter: tuple[str, JournalStore]) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = counter
    _width(browser, 390)
    browser.get(url + "?lang=en")
    browser.find_element("css selector", "#fallback > summary").click()
    browser.find_element("id", "clerk").send_keys("clerk-ani")
    browser.find_element("id", "qr").send_keys(_qr_from_png() + Keys.ENTER)
    assert _ack(browser, "qrform") == "Served: see the result"
    served = browser.find_element("css selector", "#qrform .ack").value_of_css_property("color")
    browser.find_element("id", "mcard").send_keys(identity().card_id.hex())
    browser.find_element("id", "msup").send_keys("sri")
    browser.find_element("id", "mpass").send_keys("tebakan" + Keys.ENTER)
    assert _ack(browser, "manualform") == "Refused: see the result"
    WebDriverWait(browser, 20).until(lambda d: d.find_element("id", "headline").text == "DECLINED")
    refused = browser.find_element("css selector", "#manualform .ack").value_of_css_property("color")
    declined = browser.find_element("id", "headline").value_of_css_property("color")
    assert refused != served  # it was the served green
    assert refused == declined  # the colour of every decline on the page
