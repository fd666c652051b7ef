"""Signed card records: COSE_Sign1, identity/slot claims, NDEF layout, card session.

Spec: docs/card-format.md. Submodules:

- :mod:`cardlib.records.cose` — COSE_Sign1 sign/verify (RFC 9052 §4)
- :mod:`cardlib.records.errors` — the error tree (root :class:`RecordError`)
- :mod:`cardlib.records.claims` — identity and slot claim sets (strict CBOR)
- :mod:`cardlib.records.layout` — fixed, page-aligned NDEF layout on a Type 2 tag
- :mod:`cardlib.records.session` — read/verify, tear-safe redemption, recovery
- :mod:`cardlib.records.issuance` — image of a newly issued card
"""
