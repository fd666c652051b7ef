"""NXP originality signature of NTAG21x (READ_SIG; NXP AN11350, NTAG213/215/216 datasheet §10.7).

The signature is 32 bytes ``r || s`` (IEEE P1363) of ECDSA on secp128r1 over
the raw 7-byte UID, with no hash. It is static: it shows the chip came from
NXP, it does **not** stop clones (magic cards replay UID and signature).
Python's ``cryptography`` lacks secp128r1, so python-ecdsa does the math.
"""

from __future__ import annotations

import ecdsa
from ecdsa.util import sigdecode_string

from cardlib.type2.errors import OriginalityError

#: NXP's NTAG21x originality public key (uncompressed point; AN11350, proxmark3 ``cmdhfmfu.c``).
NXP_NTAG21X_PUBLIC_KEY = bytes.fromhex("04494E1A386D3D3CFE3DC10E5DE68A499B1C202DB5B132393E89ED19FE5BE8BC61")
SIGNATURE_LENGTH = 32
UID_LENGTH = 7


def verify_originality(uid: bytes, signature: bytes, public_key: bytes = NXP_NTAG21X_PUBLIC_KEY) -> None:
    """Verify an NTAG21x READ_SIG answer for *uid*; return only when it verifies.

    :param uid: the tag's 7-byte UID.
    :param signature: the 32-byte READ_SIG answer (r || s, 16 bytes each).
    :param public_key: uncompressed secp128r1 point (33 bytes, ``04 || x || y``).
    :raises OriginalityError: wrong lengths, an all-zero signature (chip never
        personalised by NXP) or a signature that does not verify.
    """
    if len(uid) != UID_LENGTH:
        raise OriginalityError(f"UID must be {UID_LENGTH} bytes, got {len(uid)}")
    if len(signature) != SIGNATURE_LENGTH:
        raise OriginalityError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    if not any(signature):
        raise OriginalityError("signature is all zeros: not an NXP-personalised chip")
    key = ecdsa.VerifyingKey.from_string(public_key, curve=ecdsa.SECP128r1)
    try:
        key.verify_digest(signature, uid, sigdecode=sigdecode_string, allow_truncate=True)
    except ecdsa.BadSignatureError as exc:
        raise OriginalityError("originality signature does not verify for this UID") from exc
