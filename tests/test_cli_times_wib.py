"""One time convention on the console: WIB wall time to the second (``household show``'s), from one formatter.

``cards block``, ``cards blocks``, ``people list`` and ``terminals list`` printed UTC ISO text with
microseconds (``2026-12-07T20:55:00.123456+00:00``) while ``household show`` printed WIB.
"""

from __future__ import annotations

import re

from tests.test_dashboard import add_person, audit_db, programme  # noqa: F401 - fixtures
from tests.test_server_cli import _huma, env  # noqa: F401 - env: fixture

WIB_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WIB")
UTC_ISO = re.compile(r"\d\dT\d\d:\d\d|\+00:00|:\d\d\.\d")


def test_block_blocks_people_and_terminals_print_wib_to_the_second(
        app, programme, env, capsys) -> None:  # noqa: F811 - fixtures
    add_person(app, "tech", "technician")
    card = programme["by_region"]["62.71"][0].card_id
    for argv in (("server", "cards", "block", card, "--reason", "lost", "--by", "tech"),
                 ("server", "cards", "blocks"), ("server", "people", "list"), ("server", "terminals", "list")):
        code, out, err = _huma(capsys, *argv)
        assert code == 0, (argv, err)
        assert WIB_TIME.search(out) and not UTC_ISO.search(out), (argv, out)
