"""List commands print column headers and their count in words: "1 terminal", "2 terminals", "1 person", never "1 people"."""

from __future__ import annotations

import re

import pytest

from cardlib.clitypes import count_noun
from tests.test_server_cli import _huma, env  # noqa: F401 - env: fixture


@pytest.mark.parametrize(("n", "expected"), [(0, "0 entries"), (1, "1 entry"), (2, "2 entries")])
def test_count_noun_takes_the_noun_in_the_right_number(n: int, expected: str) -> None:
    assert count_noun(n, "entry", "entries") == expected


def test_people_and_terminals_lists_have_headers_and_say_how_many(app, world, env, capsys, tmp_path):  # noqa: F811
    code, out, _err = _huma(capsys, "server", "people", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "USERNAME", "ROLE", "STATE", "CREATED"], out
    created = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WIB"  # WIB to the second, as every console line
    assert re.fullmatch(r" +\d+  admin +admin +enabled +" + created, lines[1]) and lines[-1] == "1 person", out
    pw = tmp_path / "pw"
    pw.write_text("another long password\n")
    assert _huma(capsys, "server", "people", "add", "ana", "--role", "auditor", "--password-file", str(pw))[0] == 0
    assert _huma(capsys, "server", "people", "list")[1].splitlines()[-1] == "2 people"

    world.enrol("T-701", approve=False)
    code, out, _err = _huma(capsys, "server", "terminals", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["TERMINAL", "STATUS", "KEY", "ID", "ENROLLED", "DECIDED", "FINGERPRINT"]
    assert lines[1].startswith("T-701") and lines[-1] == "1 terminal", out
    # each header sits over its column
    fingerprint = re.search(r"(?:[0-9a-f]{4} ){15}[0-9a-f]{4}$", lines[1])  # in groups of 4, as the counter shows it
    assert fingerprint is not None and lines[0].index("FINGERPRINT") == fingerprint.start(), out
    assert lines[0].index("ENROLLED") == lines[1].index(lines[1].split()[3])
    world.enrol("T-702", approve=False)
    assert _huma(capsys, "server", "terminals", "list", "--status", "pending")[1].splitlines()[-1] == \
        "2 terminals pending"
    assert _huma(capsys, "server", "terminals", "list", "--status", "revoked")[1] == "no terminals revoked\n"

    world.enrolment_code("T-703")
    code, out, _err = _huma(capsys, "server", "terminals", "codes")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["TERMINAL", "ISSUED", "EXPIRES"] and lines[1].startswith("T-703")
    assert lines[-1] == "1 usable enrolment code", out
    assert _huma(capsys, "server", "terminals", "cancel-codes", "T-703")[1] == "T-703: 1 enrolment code cancelled\n"
