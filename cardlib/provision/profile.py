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
from cardlib.records.claims import Programme, Unit, cycle_bounds, cycle_of
from cardlib.records.errors import ClaimsError

_UNITS = {"package": Unit.PACKAGE, "rupiah": Unit.RUPIAH, "visit": Unit.VISIT}


@dataclass(frozen=True)
class Profile:
    """:ivar programmes: id -> entitlement per cycle. :ivar offline_cap: id -> cap (programme unit).
    :ivar valid_days: identity validity in days. :ivar cycle: cycle id of the initial state,
    or None for the province cycle at issuance (:meth:`cycle_at`)."""

    programmes: Mapping[int, Programme]
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
        return cycle_of(dt.datetime.fromtimestamp(now, dt.timezone.utc))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Profile":
        """:raises ProfileError: missing or malformed entries."""
        try:
            progs: dict[int, Programme] = {}
            caps: dict[int, int] = {}
            for key, p in dict(data["programmes"]).items():
                pid = int(key)
                progs[pid] = Programme(_UNITS[p["unit"]], int(p["per_cycle"]))
                caps[pid] = int(p.get("offline_cap", p["per_cycle"]))
            valid_days = int(data.get("valid_days", 730))
            cycle = int(data["cycle"]) if "cycle" in data else None
            if cycle is not None:
                cycle_bounds(cycle)  # year * 10 + half, or ValueError
        except (KeyError, TypeError, ValueError, ClaimsError) as exc:
            raise ProfileError(f"bad provisioning profile: {exc!r}") from exc
        if not progs or valid_days < 1:
            raise ProfileError("profile needs at least one programme and valid_days >= 1")
        return cls(progs, caps, valid_days, cycle)

    @classmethod
    def load(cls, path: Path) -> "Profile":
        """:raises ProfileError: unreadable or malformed TOML."""
        try:
            return cls.from_mapping(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProfileError(f"cannot read profile {path}: {exc}") from exc
