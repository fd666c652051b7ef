"""Click parameter types shared by cardlib's command-line tools (``huma keys|provision|sim|card``).

Every option whose value is binary (kids, card ids, UIDs, signatures, keys) is typed
:class:`HexBytes`, so a bad value is refused while the command line is parsed, before any
file, token or card is touched, with one line naming the option::

    Error: Invalid value for '--pin-root': 'zz' is not hex (expected 4 bytes, 8 hex digits)

Exit status 2 (click's usage-error status, which ``huma.cli.main`` passes through).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

#: Characters people put between hex byte pairs when copying from tools and screens.
_SEPARATORS = (" ", ":", "-")
#: The UTF-8 byte-order mark (Unicode 15 §23.8) that Windows editors put at the start of text files.
UTF8_BOM = b"\xef\xbb\xbf"


def input_lines(data: bytes) -> list[bytes]:
    """The lines of a text input file's bytes, without a leading UTF-8 byte-order mark.

    Every line-based input of the card-side tools (id lists, secret files) goes
    through here, so a file saved by Notepad reads like one saved by vi.

    :param data: the whole file.
    :returns: the lines without their line endings (``bytes.splitlines``).
    """
    return data.removeprefix(UTF8_BOM).splitlines()


#: Longest first line of a passphrase, PIN or password file (a passphrase is a few dozen bytes).
SECRET_LINE_MAX = 64 * 1024


def read_secret_line(path: Path, *, limit: int = SECRET_LINE_MAX) -> bytes:
    """The first line of a secret file (passphrase, PIN, password), read with a bound.

    Without a bound ``--passphrase-file /dev/zero`` (or a disk image given by mistake) was read
    whole, until the process ran out of memory. A leading UTF-8 byte-order mark and the line
    ending (``\n``, ``\r\n``) are dropped, as :func:`input_lines` does.

    :returns: the first line, possibly empty.
    :raises OptionError: ``path`` is not a regular file, cannot be read, or its first line is
        longer than ``limit`` bytes.
    """
    if not path.is_file():
        raise OptionError(f"{path}: not a regular file (a secret file has the secret on line 1)")
    try:
        with path.open("rb") as fh:
            head = fh.read(limit + 1)
    except OSError as exc:
        raise OptionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = input_lines(head)
    first = lines[0] if lines else b""
    if len(first) > limit:  # no line end in the first limit + 1 bytes
        raise OptionError(f"{path}: the first line is over {limit} bytes; is this the right file?")
    return first


class OptionError(click.BadParameter):
    """A bad option value, shown as one line (``Error: Invalid value for '--x': …``).

    click's :class:`~click.BadParameter` prints the usage block first; for a value that is
    merely malformed the option name and reason are enough.
    """

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``Error: <message>`` only (no usage block)."""
        click.ClickException.show(self, file)


def parse_hex(text: str, *, length: int | None = None) -> bytes:
    """Decode hex digits, tolerating byte separators (space, ``:``, ``-``) and a ``0x`` prefix.

    :param length: required length in bytes, or None for any non-empty length.
    :returns: the bytes.
    :raises ValueError: not hex, odd digit count, empty, or not ``length`` bytes (message says which).
    """
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    for sep in _SEPARATORS:
        digits = digits.replace(sep, "")
    want = f" (expected {length} bytes, {2 * length} hex digits)" if length is not None else ""
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"{text!r} is not hex{want}") from None
    if not data:
        raise ValueError(f"empty value, expected hex digits{want}")
    if length is not None and len(data) != length:
        raise ValueError(f"{text!r} is {len(data)} bytes{want}")
    return data


class HexBytes(click.ParamType):
    """A hex string of exactly ``length`` bytes (any length when None) → :class:`bytes`.

    :param length: bytes expected (e.g. 4 for a kid, 8 for a card id, 7 for a UID).
    """

    name = "hex"

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def get_metavar(self, param: click.Parameter) -> str:
        return "HEX" if self.length is None else f"HEX{self.length}"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        try:
            return parse_hex(str(value), length=self.length)
        except ValueError as exc:
            raise OptionError(str(exc), ctx=ctx, param=param) from None


class Checked(click.ParamType):
    """Text checked by a validator that raises :class:`ValueError` (e.g. the terminal id rule).

    :param name: the metavar, e.g. ``"TERMINAL_ID"``.
    :param check: returns the (possibly normalised) value or raises ValueError with the reason.
    """

    def __init__(self, name: str, check: Callable[[str], str]) -> None:
        self.name = name
        self._check = check

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self._check(str(value))
        except ValueError as exc:
            raise OptionError(str(exc), ctx=ctx, param=param) from None


class OutputExists(click.ClickException):
    """An output file already exists and ``--force`` was not given (exit status 2)."""

    exit_code = 2


def refuse_overwrite(path: Path, force: bool) -> None:
    """Refuse to replace an existing output file unless the user passed ``--force``.

    :raises OutputExists: ``path`` exists and ``force`` is false.
    """
    if not force and path.exists():
        raise OutputExists(f"{path} exists; pass --force to overwrite it")


class OutputDirMissing(click.ClickException):
    """The directory of an output file does not exist or is not a directory (exit status 2).

    Commands never create it: a mistyped path would otherwise leave a card file somewhere
    nobody looks, and the command would still say it succeeded.
    """

    exit_code = 2


def require_output_dir(out: Path) -> None:
    """Refuse an OUT whose parent directory is missing or not a directory.

    :raises OutputDirMissing: naming the directory.
    """
    parent = out.parent
    if not parent.exists():
        raise OutputDirMissing(f"{out}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise OutputDirMissing(f"{out}: {parent} is not a directory")


#: ``--force`` for every command that writes an OUT file.
force_option = click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")


def count_noun(n: int, one: str, many: str) -> str:
    """A count with its noun in the right number, for every command's output: ``"1 entry"``, ``"2 entries"``.

    :param n: the count.
    :param one: the noun for exactly one (``"person"``).
    :param many: the noun for zero or several (``"people"``).
    """
    return f"{n} {one if n == 1 else many}"
