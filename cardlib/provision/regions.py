"""Kemendagri region codes of Kalimantan Tengah (province 62): 13 regencies and 1 city.

Source: Permendagri / Kepmendagri code lists as mirrored in public datasets (checked
2026-11: 62.01 … 62.13 regencies, 62.71 Kota Palangka Raya). Codes on the card may be
deeper (district ``62.71.01``, village ``62.71.01.1001``); their regency part must be one
of these.
"""

from __future__ import annotations

import re

PROVINCE = "62"

REGENCIES: dict[str, str] = {
    "62.01": "Kabupaten Kotawaringin Barat",
    "62.02": "Kabupaten Kotawaringin Timur",
    "62.03": "Kabupaten Kapuas",
    "62.04": "Kabupaten Barito Selatan",
    "62.05": "Kabupaten Barito Utara",
    "62.06": "Kabupaten Sukamara",
    "62.07": "Kabupaten Lamandau",
    "62.08": "Kabupaten Seruyan",
    "62.09": "Kabupaten Katingan",
    "62.10": "Kabupaten Pulang Pisau",
    "62.11": "Kabupaten Gunung Mas",
    "62.12": "Kabupaten Barito Timur",
    "62.13": "Kabupaten Murung Raya",
    "62.71": "Kota Palangka Raya",
}

_CODE_RE = re.compile(r"^(\d{2}\.\d{2})(\.\d{2}(\.\d{4})?)?$")


def check_region(code: str) -> str:
    """Validate a Kalteng region code (regency ``62.xx``, district or village below it).

    :returns: the code, stripped.
    :raises ValueError: naming why it is not one.
    """
    code = code.strip()
    m = _CODE_RE.match(code)
    if not m:
        raise ValueError(f"{code!r} is not a Kemendagri code like 62.71 or 62.71.01")
    if m.group(1) not in REGENCIES:
        if not code.startswith(PROVINCE + "."):
            raise ValueError(f"{code!r} is outside Kalimantan Tengah (province {PROVINCE})")
        raise ValueError(f"{code!r}: no regency/city {m.group(1)} in Kalimantan Tengah")
    return code
