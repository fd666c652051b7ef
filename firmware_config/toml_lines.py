"""Find the line of every key in a TOML text (tomllib gives values, not positions).

A lenient scanner over text that :func:`tomllib.loads` has already accepted
(TOML 1.0): it follows table headers (``[a.b]``), arrays of tables
(``[[readers]]``, counted per path), dotted and quoted keys, inline tables
and arrays (one index per element, on the line where the element starts),
and skips strings (basic, literal, multi-line) and comments, so a ``=`` inside
a string never looks like a key.

Key paths are tuples of ``str`` (table keys) and ``int`` (array indices), as
jsonschema reports them in ``ValidationError.absolute_path``.
"""

from __future__ import annotations

from collections.abc import Sequence

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    """One pass over the text; fills :attr:`lines` (key path -> 1-based line)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.array_tables: dict[KeyPath, int] = {}  # resolved path -> element count

    # -- low-level -------------------------------------------------------
    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int = 1) -> None:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _skip_inline_ws(self) -> None:
        while not self._at_end() and self._peek() in " \t":
            self._advance()

    def _skip_comment(self) -> None:
        if self._peek() == "#":
            while not self._at_end() and self._peek() != "\n":
                self._advance()

    def _skip_ws_comments_newlines(self) -> None:
        while not self._at_end():
            ch = self._peek()
            if ch in " \t\r\n":
                self._advance()
            elif ch == "#":
                self._skip_comment()
            else:
                return

    def _skip_string(self) -> str:
        """Skip one string literal at pos; return its (unescaped enough) content."""
        for quote in ('"""', "'''"):
            if self._peek(3) == quote:
                self._advance(3)
                start = self.pos
                while not self._at_end():
                    if quote == '"""' and self._peek() == "\\":
                        self._advance(2)
                        continue
                    if self._peek(3) == quote:
                        # TOML allows up to two extra quotes before the closing delimiter.
                        while self._peek(4) == quote + quote[0]:
                            self._advance()
                        content = self.text[start : self.pos]
                        self._advance(3)
                        return content
                    self._advance()
                return self.text[start:]
        quote = self._peek()
        self._advance()
        start = self.pos
        while not self._at_end() and self._peek() != quote:
            if quote == '"' and self._peek() == "\\":
                self._advance()
            self._advance()
        content = self.text[start : self.pos]
        self._advance()
        return content

    # -- keys ------------------------------------------------------------
    def _key(self) -> tuple[list[str], int]:
        """Parse a (dotted, possibly quoted) key; return its parts and start line."""
        self._skip_inline_ws()
        start_line = self.line
        parts: list[str] = []
        while True:
            self._skip_inline_ws()
            ch = self._peek()
            if ch in ('"', "'"):
                parts.append(self._skip_string())
            else:
                start = self.pos
                while not self._at_end() and self._peek() in _BARE_KEY_CHARS:
                    self._advance()
                parts.append(self.text[start : self.pos])
            self._skip_inline_ws()
            if self._peek() == ".":
                self._advance()
                continue
            return parts, start_line

    def _resolve(self, parts: Sequence[str]) -> KeyPath:
        """Insert the current index after every prefix that is an array of tables."""
        resolved: list[str | int] = []
        for part in parts:
            resolved.append(part)
            count = self.array_tables.get(tuple(resolved))
            if count is not None:
                resolved.append(count - 1)
        return tuple(resolved)

    def _record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    # -- values ----------------------------------------------------------
    def _value(self, path: KeyPath) -> None:
        self._skip_inline_ws()
        ch = self._peek()
        if ch in ('"', "'"):
            self._skip_string()
        elif ch == "[":
            self._advance()
            index = 0
            while True:
                self._skip_ws_comments_newlines()
                if self._at_end() or self._peek() == "]":
                    self._advance()
                    return
                self._record((*path, index), self.line)
                self._value((*path, index))
                index += 1
                self._skip_ws_comments_newlines()
                if self._peek() == ",":
                    self._advance()
        elif ch == "{":
            self._advance()
            while True:
                self._skip_inline_ws()
                if self._at_end() or self._peek() == "}":
                    self._advance()
                    return
                parts, line = self._key()
                sub = path + tuple(parts)
                for depth in range(1, len(parts) + 1):
                    self._record(path + tuple(parts[:depth]), line)
                self._skip_inline_ws()
                self._advance()  # '='
                self._value(sub)
                self._skip_inline_ws()
                if self._peek() == ",":
                    self._advance()
        else:
            while not self._at_end() and self._peek() not in ",]}\n#":
                self._advance()

    # -- document --------------------------------------------------------
    def scan(self) -> dict[KeyPath, int]:
        prefix: KeyPath = ()
        while True:
            self._skip_ws_comments_newlines()
            if self._at_end():
                return self.lines
            if self._peek(2) == "[[":
                line = self.line
                self._advance(2)
                parts, _ = self._key()
                self._advance(2)  # ']]'
                parent = self._resolve(parts[:-1])
                path = (*parent, parts[-1])
                self.array_tables[path] = self.array_tables.get(path, 0) + 1
                prefix = (*path, self.array_tables[path] - 1)
                self._record(path, line)
                self._record(prefix, line)
            elif self._peek() == "[":
                line = self.line
                self._advance()
                parts, _ = self._key()
                self._advance()  # ']'
                prefix = self._resolve(parts)
                self._record(prefix, line)
            else:
                parts, line = self._key()
                for depth in range(1, len(parts) + 1):
                    self._record(prefix + tuple(parts[:depth]), line)
                self._skip_inline_ws()
                self._advance()  # '='
                self._value(prefix + tuple(parts))
            self._skip_inline_ws()
            self._skip_comment()


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path in ``text`` to the 1-based line where it is defined.

    :param text: a TOML 1.0 document that :func:`tomllib.loads` accepts.
    :returns: ``{("feedback", "success", 0): 14, ...}``; table headers map to
        their header line; the first definition wins.
    """
    return _Scanner(text).scan()


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """The line of ``path``, or of its nearest ancestor that has one, or 1.

    :param lines: the result of :func:`key_lines`.
    :param path: a key path; a missing key is attributed to its enclosing table.
    :returns: a 1-based line number.
    """
    for end in range(len(path), 0, -1):
        found = lines.get(tuple(path[:end]))
        if found is not None:
            return found
    return 1
