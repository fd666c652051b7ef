"""The ``huma`` root command when a group's package is not installed (a product wheel has no simulator)."""

from __future__ import annotations

import re
import sys

import pytest

from huma.cli import main


@pytest.fixture
def no_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import simulator.cli`` fail as it does in an install from the product wheel."""
    monkeypatch.setitem(sys.modules, "simulator.cli", None)


@pytest.mark.usefixtures("no_simulator")
def test_help_lists_every_group_and_marks_the_missing_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+sim\s+\(not installed here\)$", out, re.M)
    assert re.search(r"^\s+card\s+Inspect, dump and format", out, re.M)


@pytest.mark.usefixtures("no_simulator")
def test_a_missing_checkout_only_group_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "new", "out.card.json"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "Error: 'huma sim' is not in this installation: 'simulator' ships with the source checkout only "
        "(run it there after `make setup`)"
    ]


def test_help_shows_the_installed_groups_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert re.search(r"^\s+sim\s+Virtual NTAG213/215/216 cards", capsys.readouterr().out, re.M)
