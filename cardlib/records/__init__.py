"""Signed card records: COSE_Sign1, identity/slot claims, NDEF layout, card session.

Spec: docs/card-format.md. Submodules:

- :mod:`cardlib.records.cose` — COSE_Sign1 sign/verify (RFC 9052 §4)
- :mod:`cardlib.records.errors` — the error tree (root :class:`RecordError`)
"""
