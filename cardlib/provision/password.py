"""Per-card NTAG21x write password (docs/chip-facts.md §PWD_AUTH; NTAG213/215/216 datasheet §8.8).

``PWD || PACK = HMAC-SHA256(secret, "huma-betang/ntag-pwd/v1" || UID)[:6]``: 4 bytes PWD,
then 2 bytes PACK. The secret stays at the issuing office; terminals never need it (the
password protects only the configuration and dynamic-lock pages, see
docs/keys-and-provisioning.md). AUTHLIM stays 0 (docs/design.md §Card protection): a retry limit would let anyone
brick a stranger's card with a few wrong passwords.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

PWD_BYTES = 4
PACK_BYTES = 2
MIN_SECRET_BYTES = 16
_CONTEXT = b"huma-betang/ntag-pwd/v1"


@dataclass(frozen=True)
class CardPassword:
    """:ivar pwd: 4 bytes. :ivar pack: 2 bytes (the chip's answer, proves it is our card)."""

    pwd: bytes
    pack: bytes


def derive_password(secret: bytes, uid: bytes) -> CardPassword:
    """Derive the write password and PACK for one chip.

    :param secret: at least 16 random bytes kept by the issuing office.
    :param uid: the 7-byte chip UID.
    :raises ValueError: on a short secret or a UID that is not 7 bytes.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"password secret must be at least {MIN_SECRET_BYTES} bytes")
    if len(uid) != 7:
        raise ValueError("NTAG21x UIDs are 7 bytes")
    mac = hmac.new(secret, _CONTEXT + uid, hashlib.sha256).digest()
    return CardPassword(mac[:PWD_BYTES], mac[PWD_BYTES:PWD_BYTES + PACK_BYTES])
