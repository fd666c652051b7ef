"""Receipt codes: the short code a beneficiary holds after a tap (docs/card-format.md, receipts).

A counter shows (and may print) ``XXXX-XXXX`` for each COMMIT or FINISHED journal
entry: the first 40 bits of SHA-256(``"huma-betang/receipt/v1"`` ‖ entry hash) in the
RFC 4648 §6 base32 alphabet. The counter computes it for the slip; the server computes
the same code to find the entry again when a beneficiary or an auditor brings it.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["RECEIPT_CODE_CHARS", "receipt_code"]

#: Characters of a code without its hyphen (base32, 40 bits of the entry hash).
RECEIPT_CODE_CHARS = 8
_CONTEXT = b"huma-betang/receipt/v1"


def receipt_code(entry_hash: bytes) -> str:
    """The receipt code of a journal entry: ``XXXX-XXXX`` (RFC 4648 §6 base32 alphabet).

    :param entry_hash: SHA-256 of the entry's signed bytes (32 bytes).
    :returns: 9 characters, a hyphen in the middle.
    """
    digest = hashlib.sha256(_CONTEXT + entry_hash).digest()
    code = base64.b32encode(digest[:5]).decode("ascii")[:RECEIPT_CODE_CHARS]
    return f"{code[:4]}-{code[4:]}"
