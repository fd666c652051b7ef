"""A complaint from the counter screen to an auditor's decision, in headless Chromium (issue 18).

A real tap on a virtual card through the test's private pcscd gives a receipt code; the clerk
records a complaint about that tap on the counter screen; the counter's sync loop uploads the
journal and sends the complaint terminal-signed to the live server (waitress; SQLite and
PostgreSQL); an auditor logs in, finds it by the receipt code, moves it to investigating and
then resolved with reasons, and the audit log holds each step. Pages are checked at phone
(390 px) and desktop (1280 px) widths; screenshots go to docs/screenshots/grievance-*.png.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from sqlalchemy import select

from terminal.grievances import GrievanceQueue, GrievanceSender
from terminal.outcome import TapStatus
from terminal.sync import HttpApi, SyncClient, SyncLoop, TrustStore
from tests.fixtures.browser import full_page_png, no_horizontal_scroll, until
from tests.reconcile_support import AUDITOR_PASSWORD, add_auditor, audit_db  # noqa: F401 - audit_db: fixture
from tests.test_audit_browser import _follow
from tests.test_counter_screen_browser import screen_counter, size  # noqa: F401 - screen_counter: a fixture
from tests.test_records_support import TERMINAL
from tests.test_terminal_support import TrustKit, enrol_terminal
from tests.test_terminal_sync import pinned_receipt_key

pytestmark = [pytest.mark.browser(hide_scrollbars=True), pytest.mark.pcsc]
TERMINAL_ID = "T-6271-0001"


def shoot(driver: Any, name: str) -> None:
    """A full-page screenshot as docs/screenshots/grievance-<name>.png."""
    full_page_png(driver, f"grievance-{name}")


def both_widths(driver: Any, name: str) -> None:
    """No horizontal overflow at phone and desktop widths; a screenshot of each."""
    for device in ("phone", "desktop"):
        size(driver, device)
        time.sleep(0.3)
        assert no_horizontal_scroll(driver), (name, device)
        shoot(driver, f"{name}-{device}")


def test_a_complaint_goes_from_the_counter_to_an_auditors_decision(
        app, audit_db, world, live_server, browser, screen_counter, present_card, tmp_path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from server.extensions import db
    from server.grievances import Grievance
    from server.models import AuditLog, Person
    from tests.test_terminal_tap import issued_chip

    c, screen = screen_counter
    enrol_terminal(world, TERMINAL_ID, TERMINAL)
    queue = GrievanceQueue(tmp_path / "grievances.sqlite")
    api = HttpApi(f"http://{live_server.host}:{live_server.port}")
    client = SyncClient(api, c.journal, TERMINAL, TERMINAL_ID, TrustStore(tmp_path / "bundle.cose",
                                                                          TrustKit().root.public_key),
                        receipt_key=pinned_receipt_key(world, TERMINAL_ID))
    client.grievances = GrievanceSender(api, queue, TERMINAL, TERMINAL_ID, receipt_key=client.receipt_key)
    loop = SyncLoop(client, interval_s=3600, backoff_s=(0.2, 1.0), rng=random.Random(1))
    c.state.grievances, c.state.sync_trigger = queue, loop.kick  # as the daemon wires them
    loop.start()
    try:
        with present_card(issued_chip(), slot=0):
            tap = c.wait(1)
        assert tap.status is TapStatus.ACCEPTED and tap.receipt is not None
        code = tap.receipt.code

        # the clerk: a complaint about the last tap, on the counter screen
        size(browser, "phone")
        browser.get(screen.url)
        _follow(browser, browser.find_element(By.ID, "complaint"))
        assert browser.find_element(By.TAG_NAME, "title").get_attribute("textContent") == "Keluhan"
        about = Select(browser.find_element(By.ID, "about"))
        assert about.first_selected_option.text == "— pilih —"  # never the newest tap unless the clerk picks it
        about.select_by_visible_text(next(o.text for o in about.options if code in o.text))
        Select(browser.find_element(By.ID, "category")).select_by_value("not_received")
        browser.find_element(By.ID, "submit").click()  # no text yet: the browser's required check holds it
        assert browser.find_element(By.ID, "ack").text == ""
        browser.find_element(By.ID, "text").send_keys("Paket pangan tidak diserahkan, tapi struk keluar")
        button = browser.find_element(By.ID, "submit")
        button.click()
        until(browser, lambda d: d.find_element(By.ID, "ack").text, 10)
        ack = browser.find_element(By.ID, "ack").text
        assert "Tersimpan di loket ini" in ack, ack
        assert button.is_enabled()
        deadline = time.monotonic() + 30
        while queue.unsent_count() and time.monotonic() < deadline:  # the kicked sync round sends it
            time.sleep(0.1)
        assert queue.unsent_count() == 0, loop.health
        until(browser, lambda d: d.execute_script(  # the list is redrawn every 3 s
            "var li = document.querySelector('#complaints li'); return li && li.dataset.status;") == "sent", 10)
        both_widths(browser, "counter")

        # the auditor: finds it by the receipt code as the household reads it out
        add_auditor(app)
        base = f"http://{live_server.host}:{live_server.port}"
        browser.get(f"{base}/audit/grievances")
        browser.find_element(By.ID, "username").send_keys("audrey")
        browser.find_element(By.ID, "password").send_keys(AUDITOR_PASSWORD)
        _follow(browser, browser.find_element(By.ID, "login"))
        browser.get(f"{base}/audit/grievances")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Keluhan"
        browser.find_element(By.ID, "grievance-q").send_keys(code.lower().replace("-", ""))
        _follow(browser, browser.find_element(By.ID, "grievance-filter"))
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.grievance")
        assert len(rows) == 1 and rows[0].get_attribute("data-status") == "open"
        assert browser.execute_script("return document.scripts.length") == 0
        both_widths(browser, "list")
        _follow(browser, rows[0].find_element(By.CSS_SELECTOR, "td a"))
        assert browser.find_element(By.ID, "grievance-code").text == code
        assert browser.find_element(By.ID, "grievance-source").text == TERMINAL_ID
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr.receipt-entry")) == 1  # the uploaded tap
        browser.find_element(By.ID, "reason").send_keys("menelepon operator loket")
        _follow(browser, browser.find_element(By.ID, "move-investigating"))
        assert browser.find_element(By.ID, "grievance-status").text == "sedang diperiksa"
        browser.find_element(By.ID, "reason").send_keys("paket diserahkan, disaksikan kepala desa")
        _follow(browser, browser.find_element(By.ID, "move-resolved"))
        assert browser.find_element(By.ID, "grievance-status").text == "selesai"
        assert browser.find_element(By.ID, "grievance-reason").text == "paket diserahkan, disaksikan kepala desa"
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr.history")) == 3
        both_widths(browser, "decided")
        browser.get(browser.current_url + "?lang=en")
        assert browser.find_element(By.ID, "grievance-status").text == "resolved"
    finally:
        loop.stop()
        queue.close()

    with app.app_context():
        [g] = db.session.scalars(select(Grievance)).all()
        assert (g.receipt_code, g.source_terminal, g.status, g.card_id) == (code, TERMINAL_ID, "resolved", tap.card_id)
        rows = db.session.execute(select(AuditLog.action, AuditLog.detail, Person.username)
                                  .outerjoin(Person, Person.id == AuditLog.person_id)
                                  .where(AuditLog.target == f"grievance:{g.id}").order_by(AuditLog.id)).all()
    assert [(a, who) for a, _, who in rows] == [("grievance.recorded", None), ("grievance.status", "audrey"),
                                                ("grievance.status", "audrey")]
    assert json.loads(rows[0][1])["terminal_id"] == TERMINAL_ID
    assert [(json.loads(d)["before"], json.loads(d)["after"], json.loads(d)["reason"]) for _, d, _ in rows[1:]] == [
        ("open", "investigating", "menelepon operator loket"),
        ("investigating", "resolved", "paket diserahkan, disaksikan kepala desa")]
