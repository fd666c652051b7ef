"""``huma config check`` on inputs a technician may give by mistake: huge or endless files
(bounded read, one line, exit 2) and profiles with many problems (each reported once)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from huma.cli import main as huma_main

#: The cap the brief asks for: profiles are a few KiB.
CAP = 1024 * 1024
#: Address-space limit for the child: far above what the CLI needs, far below an unbounded read.
_CHILD_AS_LIMIT = 768 * 1024 * 1024


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_CHILD_AS_LIMIT, _CHILD_AS_LIMIT))


def _padded_profile(size: int) -> bytes:
    """A valid-TOML file of exactly ``size`` bytes (a comment pads it)."""
    head = b'kind = "reader"\n#'
    return head + b"x" * (size - len(head) - 1) + b"\n"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_device_is_refused_in_one_line_with_bounded_memory() -> None:
    # In a child with a capped address space: an unbounded read dies there (MemoryError),
    # not on the shared machine.
    proc = subprocess.run(
        [sys.executable, "-m", "huma", "config", "check", "/dev/zero"],
        capture_output=True, text=True, timeout=120, preexec_fn=_limited,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "/dev/zero" in lines[0] and "larger than" in lines[0]


def test_regular_file_over_the_cap_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(_padded_profile(CAP + 1))
    assert huma_main(["config", "check", str(big)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "larger than" in err[0] and str(big) in err[0], err


def test_file_at_the_cap_is_still_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edge = tmp_path / "edge.toml"
    edge.write_bytes(_padded_profile(CAP))
    assert huma_main(["config", "check", str(edge)]) == 2  # invalid profile, but read and checked
    err = capsys.readouterr().err
    assert "larger than" not in err and "required key is missing" in err


_READER_REQUIRED = ("schema_version", "name", "stack", "name_pattern", "pass_through", "max_frame",
                    "poll_interval", "feedback")
_TERMINAL_REQUIRED = ("schema_version", "terminal_id", "region", "counter_mode", "programmes", "server_url",
                      "sync_interval", "paths", "readers")


@pytest.mark.parametrize(("kind", "required"), [("reader", _READER_REQUIRED), ("terminal", _TERMINAL_REQUIRED)])
def test_each_missing_key_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, required: tuple[str, ...]
) -> None:
    path = tmp_path / "bare.toml"
    path.write_text(f'kind = "{kind}"\n')
    assert huma_main(["config", "check", str(path)]) == 2
    lines = [l.removeprefix("error: ") for l in capsys.readouterr().err.strip().splitlines()]
    assert sorted(lines) == sorted(f"{path}:1: {key}: required key is missing" for key in required)


def test_nested_tables_missing_several_keys_report_each_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nested.toml"
    path.write_text(
        'kind = "terminal"\nschema_version = 1\nterminal_id = "x"\n'
        "[paths]\n[[readers]]\n[[readers]]\n[policy]\nbogus = 1\nworse = 2\n"
    )
    assert huma_main(["config", "check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == len(set(lines)), lines
    text = "\n".join(lines)
    for key in ("paths.key", "paths.journal", "readers[0].profile", "readers[1].profile",
                "policy.bogus", "policy.worse"):
        assert text.count(f": {key}: ") == 1, (key, lines)
