"""The card page's PIN resets in headless Debian Chromium at phone and desktop widths (no overflow, no script)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.provision.session import static_keys
from cardlib.provision.state import BatchState
from tests.fixtures.browser import PHONE
from tests.reconcile_support import add_auditor, audit_db  # noqa: F401 - audit_db: fixture
from tests.test_dashboard_browser import DESKTOP, _log_in, _no_overflow, _viewport
from tests.test_pin_resets_upload import CARD, HOUSEHOLD, UID

pytestmark = pytest.mark.browser


def test_pin_resets_on_the_card_page_at_phone_and_desktop_width(
        app: Any, audit_db: str, world: Any, live_server: Any, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    from server.extensions import db
    from server.pin_resets import register_pin_resets
    from server.types import utcnow

    tech = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    station = BatchState(tmp_path / "single-cards", "single-cards")
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", tech.kid, "ntag", 3, True, pin_epoch=1, epoch_before=0,
                      approved_by="kepala-kantor", signer=tech)
    station.pin_reset(CARD, UID, HOUSEHOLD, "tech-07", tech.kid, "ntag", 5, True, pin_epoch=2, epoch_before=0,
                      signer=tech)
    with app.app_context():
        register_pin_resets(db.write_session(), (tmp_path / "single-cards" / "pin-resets.cose").read_bytes(),
                            None, utcnow(), technician_keys=static_keys(cose_key(tech)))
        db.session.commit()
    add_auditor(app)
    base = f"http://{live_server.host}:{live_server.port}"
    for width, height in (PHONE, DESKTOP):
        _viewport(browser, width, height)
        _log_in(browser, base, "audrey")
        browser.get(f"{base}/audit/cards/{CARD.hex()}")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.pin-reset")
        assert [r.get_attribute("data-flags") for r in rows] == ["", "epoch_back self_approved"]
        assert "kepala-kantor" in rows[0].text and "0 → 1" in rows[0].text
        assert all(r.is_displayed() and r.rect["width"] <= width for r in rows)
        assert browser.execute_script("return document.scripts.length") == 0
        _no_overflow(browser, f"card page with PIN resets at {width} px")
        browser.delete_all_cookies()
