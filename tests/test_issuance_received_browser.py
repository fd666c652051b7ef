"""The card page's issuance line (issued, received, late flag) fits a 390 px phone, in Indonesian and English.

Measured in headless Debian Chromium like tests/test_audit_layout_browser.py: the page is no wider than
the viewport and the late flag ends inside it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.reconcile_support import add_auditor, audit_db  # noqa: F401 - fixture
from tests.test_dashboard_browser import _log_in, _viewport
from tests.test_issuance_received_time import _issue
from tests.test_registry_reconcile import UTC, Keys, keys, registry  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser


def test_the_issuance_line_fits_a_phone(app: Any, registry: Any, keys: Keys,  # noqa: F811 - fixtures
                                        live_server: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    claims = _issue(registry, keys, 1, dt.datetime.now(UTC) - dt.timedelta(days=30))
    add_auditor(app)
    base = f"http://{live_server.host}:{live_server.port}"
    _viewport(browser, 390, 844)
    _log_in(browser, base, "audrey")
    for lang in ("id", "en"):
        browser.get(f"{base}/audit/cards/{claims.card_id.hex()}?lang={lang}")
        browser.execute_script("return document.body.offsetHeight")  # layout at this width
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= 390, f"card ({lang}): {scroll} px wide at a 390 px viewport"
        late = browser.find_element(By.ID, "issued-late")
        assert late.is_displayed() and "30" in late.text, lang
        right = browser.execute_script("return arguments[0].getBoundingClientRect().right", late)
        assert right <= 390, f"the late flag ({lang}) ends at {right} px"
