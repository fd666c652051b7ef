"""The counter's systemd unit loads every credential the counter reads (docs/systemd/huma-terminal.service).

The daemon reads the key passphrase and the card-password keys' passphrase from
``$CREDENTIALS_DIRECTORY`` (:mod:`terminal.keys`); a unit without the card-keys line started a
counter with ``paths.card_keys`` that could not write secure cards unless the operator edited the unit.
"""

from __future__ import annotations

import re
from pathlib import Path

from terminal.keys import CARD_KEYS_PASSPHRASE_CREDENTIAL, PASSPHRASE_CREDENTIAL, PIN_CREDENTIAL

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _loaded(unit: str) -> set[str]:
    return set(re.findall(r"^LoadCredentialEncrypted=([\w.-]+)\s*$", unit, re.M))


def test_the_unit_loads_the_key_and_card_keys_passphrases() -> None:
    unit = (DOCS / "systemd" / "huma-terminal.service").read_text()
    assert _loaded(unit) == {PASSPHRASE_CREDENTIAL, CARD_KEYS_PASSPHRASE_CREDENTIAL}
    assert f"LoadCredentialEncrypted={PIN_CREDENTIAL}" in unit  # the token PIN, commented, for pkcs11


def test_operations_names_the_unit_line() -> None:
    ops = (DOCS / "operations.md").read_text()
    assert f"huma-terminal.service: LoadCredentialEncrypted={CARD_KEYS_PASSPHRASE_CREDENTIAL}" in ops
    assert "add `LoadCredentialEncrypted=huma-card-keys-passphrase` to" not in ops
