"""The findings table's "Card / terminal" cell keeps the card id and the terminal apart.

A finding naming both (impossible travel) showed ``a09f76b5a170b338T-0001``: the template's whitespace
between the two links was trimmed away, so they read as one id.
"""

from __future__ import annotations

import re

from tests.reconcile_support import run, upload_all
from tests.test_dashboard import _login, _ms, audit_db, programme  # noqa: F401 - fixtures


def test_card_and_terminal_are_two_words(app, programme, world) -> None:  # noqa: F811 - fixtures
    d = programme["district"]
    card = programme["by_region"]["62.71"][2]
    d.local_terminals("62.71")[0].redeem(card, _ms(4, 2), "food", 150_000)
    d.local_terminals("62.03")[0].redeem(card.clone(counter=1), _ms(4, 2, 20), "food", 150_000)
    upload_all(world, d)
    run(app)
    _login(world.client)
    html = world.client.get("/audit/findings?lang=en").get_data(as_text=True)
    cells = re.findall(r'<td data-label="Card / terminal">(.*?)</td>', html, re.S)
    both = [c for c in cells if "/audit/cards/" in c and "/audit/terminals/" in c]
    assert both, cells
    for cell in both:
        text = re.sub(r"<br>", "\n", cell)
        text = re.sub(r"<[^>]+>", "", text)
        assert re.fullmatch(r"\s*[0-9a-f]{16}\s+T-\d+\s*", text), cell  # two words, not "…b338T-0001"
