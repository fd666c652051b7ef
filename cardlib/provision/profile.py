"""Provisioning profile: which programmes a card carries, how much, for how long.

TOML (Python ``tomllib``)::

    valid_days = 730            # identity valid_to = issue day + valid_days
    cycle = 20261               # optional: cycle id of the initial slot; default
                                # cycle_of(issue time), docs/card-format.md §conventions
    [programmes.1]              # programme id
    unit = "package"            # package | rupiah | visit
    per_cycle = 1
    offline_cap = 1
    [programmes.2]
    unit = "rupiah"
    per_cycle = 250000
    offline_cap = 250000
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardlib.provision.errors import ProfileError
from cardlib.records.claims import Entitlement, Unit, cycle_bounds, cycle_of
from cardlib.records.errors import ClaimsError

_UNITS = {"package": Unit.PACKAGE, "rupiah": Unit.RUPIAH, "visit": Unit.VISIT}
DEFAULT_VALID_DAYS = 730
_BOM = "\ufeff"


@dataclass(frozen=True)
class Profile:
    """:ivar programmes: id -> entitlement per cycle. :ivar offline_cap: id -> cap (programme unit).
    :ivar valid_days: identity validity in days. :ivar cycle: cycle id of the initial state,
    or None for the province cycle at issuance (:meth:`cycle_at`)."""

    programmes: Mapping[int, Entitlement]
    offline_cap: Mapping[int, int]
    valid_days: int
    cycle: int | None = None

    def cycle_at(self, now: int) -> int:
        """The cycle id a genesis state issued at ``now`` (POSIX seconds) carries.

        The profile's fixed ``cycle`` when set (e.g. issuing ahead for the next
        half-year), else ``cycle_of(now)`` (docs/card-format.md §conventions).
        """
        if self.cycle is not None:
            return self.cycle
        return cycle_of(dt.datetime.fromtimestamp(now, dt.UTC))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "profile") -> Profile:
        """Build and check a profile from parsed TOML.

        :param source: names the input in messages (the file path when loaded from a file).
        :raises ProfileError: a missing or malformed key, named by its dotted path
            (``programmes.2.per_cycle``); numbers must be integers (no fractions, NaN or inf).
        """

        def fail(key: str, why: str) -> ProfileError:
            return ProfileError(f"{source}: {key}: {why}")

        def integer(table: Mapping[str, Any], key: str, path: str, *, minimum: int = 0,
                    default: int | None = None) -> int:
            if key not in table:
                if default is None:
                    raise fail(path, "required key is missing")
                return default
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(path, f"must be an integer, not {value!r}")
            if value < minimum:
                raise fail(path, f"must be at least {minimum}, not {value}")
            return value

        if "programmes" not in data:
            raise fail("programmes", "required table is missing (one [programmes.<id>] table per programme)")
        programmes = data["programmes"]
        if not isinstance(programmes, Mapping) or not programmes:
            raise fail("programmes", "must hold at least one [programmes.<id>] table")
        progs: dict[int, Entitlement] = {}
        caps: dict[int, int] = {}
        for key, p in programmes.items():
            path = f"programmes.{key}"
            if not key.isdigit():
                raise fail(path, "programme ids are non-negative integers")
            if not isinstance(p, Mapping):
                raise fail(path, "must be a table with unit and per_cycle")
            unit = p.get("unit")
            if unit not in _UNITS:
                raise fail(f"{path}.unit", f"{unit!r} is not one of {', '.join(_UNITS)}" if "unit" in p
                           else "required key is missing")
            per_cycle = integer(p, "per_cycle", f"{path}.per_cycle", minimum=1)
            pid = int(key)
            try:
                progs[pid] = Entitlement(_UNITS[unit], per_cycle)
            except (ClaimsError, ValueError) as exc:
                raise fail(path, str(exc)) from exc
            caps[pid] = integer(p, "offline_cap", f"{path}.offline_cap", default=per_cycle)
        valid_days = integer(data, "valid_days", "valid_days", minimum=1, default=DEFAULT_VALID_DAYS)
        cycle = None
        if "cycle" in data:
            cycle = integer(data, "cycle", "cycle")
            try:
                cycle_bounds(cycle)  # year * 10 + half, or ValueError
            except (ClaimsError, ValueError) as exc:
                raise fail("cycle", f"{cycle} is not a cycle id (year * 10 + half, e.g. 20261): {exc}") from exc
        return cls(progs, caps, valid_days, cycle)

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read a profile file (UTF-8 TOML; a leading byte-order mark is ignored).

        :raises ProfileError: unreadable, not UTF-8, not TOML, or malformed (file and key named).
        """
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
        try:
            text = raw.decode("utf-8").removeprefix(_BOM)
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{path}: not a TOML profile (byte {exc.start} is not UTF-8 text)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: TOML syntax error: {exc}") from exc
        return cls.from_mapping(data, str(path))
