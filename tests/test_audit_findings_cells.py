"""The findings table's "Card / terminal" cell keeps the card id and the terminal apart.

A finding naming both (impossible travel) showed ``a09f76b5a170b338T-0001``: the template's whitespace
between the two links was trimmed away, so they read as one id.
"""

from __future__ import annotations

import re

from tests.test_dashboard import _login, audit_db, plant_two_region_tap, programme  # noqa: F401 - fixtures


def test_card_and_terminal_are_two_words(app, programme, world) -> None:  # noqa: F811 - fixtures
    plant_two_region_tap(app, world, programme)
    _login(world.client)
    html = world.client.get("/audit/findings?lang=en").get_data(as_text=True)
    cells = re.findall(r'<td data-label="Card / terminal">(.*?)</td>', html, re.S)
    both = [c for c in cells if "/audit/cards/" in c and "/audit/terminals/" in c]
    assert both, cells
    for cell in both:
        text = re.sub(r"<br>", "\n", cell)
        text = re.sub(r"<[^>]+>", "", text)
        assert re.fullmatch(r"\s*[0-9a-f]{16}\s+T-\d+\s*", text), cell  # two words, not "…b338T-0001"
