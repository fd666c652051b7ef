"""Region levels and names of Kalimantan Tengah for reports (Kemendagri codes).

A card's region (``card_profiles.region``, from its identity record) is a Kemendagri code
at any depth: regency/city ``62.71``, district (*kecamatan*) ``62.71.01``, village
(*desa/kelurahan*) ``62.71.01.1001``. Reports group by the code's prefix at a level.

Regency names are :data:`cardlib.provision.regions.REGENCIES` (the list provisioning
validates against; checked against the Kepmendagri code list 100.1.1-6117/2022 as
mirrored in public datasets: 62.01 … 62.13 and 62.71). District and village names are
not shipped: they are shown by code.
"""

from __future__ import annotations

import enum

from cardlib.provision.regions import REGENCIES

__all__ = ["REGENCIES", "Level", "level_of", "parent", "prefix_length", "regency_of", "region_name", "short_name"]


class Level(str, enum.Enum):
    """How deep a report groups: regency/city, district, village."""

    REGENCY = "regency"
    DISTRICT = "district"
    VILLAGE = "village"


#: Characters of a code at each level (``62.71``, ``62.71.01``, ``62.71.01.1001``).
_LENGTH = {Level.REGENCY: 5, Level.DISTRICT: 8, Level.VILLAGE: 13}


def prefix_length(level: Level) -> int:
    """Characters of a region code at ``level`` (the SQL ``substr`` length)."""
    return _LENGTH[level]


def level_of(code: str) -> Level | None:
    """The level of a code by its length; ``None`` for a province code or anything else."""
    for level, n in _LENGTH.items():
        if len(code) == n:
            return level
    return None


def regency_of(code: str) -> str:
    """The regency/city part of a code (``62.71.01.1001`` → ``62.71``)."""
    return code[:_LENGTH[Level.REGENCY]]


def parent(code: str) -> str | None:
    """The code one level up (village → district → regency); ``None`` for a regency."""
    level = level_of(code)
    if level is Level.VILLAGE:
        return code[:_LENGTH[Level.DISTRICT]]
    if level is Level.DISTRICT:
        return code[:_LENGTH[Level.REGENCY]]
    return None


def region_name(code: str | None) -> str:
    """A readable name: ``"Kota Palangka Raya"`` for a regency code, else the code itself.

    ``None`` (a card without a region) is ``"?"``.
    """
    if not code:
        return "?"
    return REGENCIES.get(code, code)


def short_name(code: str | None) -> str:
    """:func:`region_name` without ``Kabupaten`` (a chart label): ``"Kapuas"``, ``"Kota Palangka Raya"``."""
    return region_name(code).removeprefix("Kabupaten ")
