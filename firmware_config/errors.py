"""The single error root of :mod:`firmware_config` and its subclasses by cause.

Every message names the FILE, the KEY (dotted path, list items as ``[i]``) and
the LINE in the TOML text, compiler style::

    firmware_config/readers/acr122u.toml:12: feedback.success[0]: 'FF 00 4' is not hex bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in one profile file.

    :ivar file: the profile's path as given by the caller.
    :ivar line: 1-based line of the key (or of the enclosing table for a
        missing key); None when no line can be attributed.
    :ivar key: dotted key path (``feedback.success[0]``); ``""`` for the whole file.
    :ivar message: what is wrong, in words a technician can act on.
    """

    file: Path
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        return f"{where}: {self.key or '(file)'}: {self.message}"


class ConfigError(Exception):
    """Root of every error raised by firmware_config."""


class ConfigNotFound(ConfigError):
    """The profile file, or a reader profile a terminal names, does not exist."""


class ConfigInvalid(ConfigError):
    """A profile failed to parse or to validate; carries every issue found.

    :ivar issues: the problems, in file order (never empty).
    """

    def __init__(self, issues: list[ConfigIssue]) -> None:
        if not issues:
            raise ValueError("ConfigInvalid needs at least one issue")
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class ConfigTooLarge(ConfigInvalid):
    """The file is larger than any profile can be (:data:`firmware_config.loader.MAX_PROFILE_BYTES`):
    most likely the wrong file (a log, a device node such as ``/dev/zero``); it is not read further."""


class ConfigSyntaxError(ConfigInvalid):
    """The file is not valid TOML (TOML 1.0); the issue carries tomllib's line."""


class ConfigSchemaError(ConfigInvalid):
    """The file is valid TOML but breaks the profile schema (unknown key, wrong
    type, missing key, bad hex, bad regex, value out of range or not in the enum)."""
