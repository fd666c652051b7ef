"""``POST /api/select`` takes a known programme and a JSON integer quantity in 1..MAX_QUANTITY, nothing looser."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from firmware_config.models import CounterMode
from terminal.screen import CounterScreen, ScreenState
from terminal.screen.server import MAX_QUANTITY


@pytest.fixture
def screen() -> Iterator[CounterScreen]:
    s = CounterScreen(ScreenState(CounterMode.MARKET_REDEMPTION, ["food", "health"]), port=0).start()
    yield s
    s.stop()


def select(screen: CounterScreen, body: object) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(screen.url + "api/select", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("body", "says"), [
    ({"programme": "food", "quantity": 2.5}, "quantity must be a whole number from 1 to"),  # was silently 2
    ({"programme": "food", "quantity": 2.0}, "quantity must be a whole number"),
    ({"programme": "food", "quantity": 1e20}, "quantity must be a whole number"),  # was "at least 1"
    ({"programme": "food", "quantity": "abc"}, "quantity must be a whole number"),  # was int()'s own text
    ({"programme": "food", "quantity": "3"}, "quantity must be a whole number"),
    ({"programme": "food", "quantity": True}, "quantity must be a whole number"),
    ({"programme": "food"}, "quantity must be a whole number from 1 to 10000000 (got missing)"),
    ({"programme": "food", "quantity": 0}, "quantity must be a whole number from 1 to"),
    ({"programme": "food", "quantity": MAX_QUANTITY + 1}, "quantity must be a whole number from 1 to"),
    ({}, "programme is required"),  # was {"error": "'programme'"}
    ({"programme": 7, "quantity": 1}, "programme is required"),
    ({"programme": "casino", "quantity": 1}, "programme 'casino' is not served at this counter"),
])
def test_a_loose_selection_is_400_naming_the_field_and_changes_nothing(screen, body, says) -> None:
    before = screen.state.request()
    status, answer = select(screen, body)
    assert status == 400 and says in str(answer["error"]), answer
    assert screen.state.request() == before


def test_a_whole_quantity_up_to_the_bound_is_selected(screen) -> None:
    assert select(screen, {"programme": "health", "quantity": MAX_QUANTITY})[0] == 200
    assert screen.state.request() == ("health", MAX_QUANTITY)
