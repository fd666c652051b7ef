"""Scanned end-of-shift checkpoints as audit evidence (issue 19, docs/checkpoints.md).

A counter signs its journal head and shift totals and prints them as a QR code
(:mod:`cardlib.records.checkpoint`). An auditor scans the slip and hands the text to
the server (``POST /api/v1/checkpoints`` or ``huma audit checkpoint add``); the
server verifies it under the terminal's certified key and stores it. Reconciliation
(:func:`server.reconcile.terminal_checks.checkpoint_heads_missing`) then flags a
terminal whose uploaded journal passes the checkpointed seq without the signed entry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.keys.signer import algorithm_of, public_key_from_spki
from cardlib.records.checkpoint import CheckpointError, SignedCheckpoint, from_qr_text, verify_checkpoint
from cardlib.records.cose import CoseKey
from cardlib.records.errors import MalformedCose, RecordError, UnknownKid
from server.auth import audit
from server.checkpoints.models import TerminalCheckpoint
from server.errors import ServerError
from server.models import Person, Terminal, TerminalStatus

__all__ = ["AddedCheckpoint", "InvalidCheckpoint", "TerminalCheckpoint", "add_checkpoint", "checkpoint_bytes"]

#: Terminal states whose key was certified: a checkpoint signed before a revocation stays evidence.
CERTIFIED = (TerminalStatus.APPROVED, TerminalStatus.REVOKED)


class InvalidCheckpoint(ServerError):
    """A scanned checkpoint that is not one, or does not verify under a certified terminal key.

    ``reason``: ``malformed`` (not HBCP1: text or not a checkpoint), ``unknown_terminal``
    (no certified terminal has the key id), ``signature`` (does not verify), ``mismatch``
    (signed by one terminal's key, naming another terminal id).
    """

    code = "invalid_checkpoint"
    status = HTTPStatus.UNPROCESSABLE_ENTITY


@dataclass(frozen=True)
class AddedCheckpoint:
    """What :func:`add_checkpoint` did: the stored row and whether it is new (False: the same slip again)."""

    row: TerminalCheckpoint
    created: bool


def checkpoint_bytes(data: bytes | str) -> bytes:
    """The COSE_Sign1 bytes of a scanned checkpoint: ``HBCP1:`` text (str or bytes) or the raw message.

    :raises InvalidCheckpoint: ``reason`` ``malformed``.
    """
    if isinstance(data, bytes):
        stripped = data.strip()
        if not stripped.startswith(b"HBCP1:"):
            return data
        try:
            data = stripped.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidCheckpoint("the checkpoint text is not ASCII", reason="malformed") from exc
    try:
        return from_qr_text(data)
    except CheckpointError as exc:
        raise InvalidCheckpoint(f"not a readable checkpoint: {exc}", reason="malformed") from exc


def _resolver(session: Session) -> tuple[dict[bytes, Terminal], Callable[[bytes], CoseKey]]:
    seen: dict[bytes, Terminal] = {}

    def resolve(kid: bytes) -> CoseKey:
        terminal = session.scalars(select(Terminal).where(Terminal.kid == kid)).one_or_none()
        if terminal is None or terminal.status not in CERTIFIED or terminal.certificate_der is None:
            raise UnknownKid(kid, f"no certified terminal has key id {kid.hex()}")
        seen[kid] = terminal
        public_key = public_key_from_spki(terminal.public_key)
        return CoseKey(kid=terminal.kid, alg=algorithm_of(public_key), public_key=public_key)

    return seen, resolve


def add_checkpoint(session: Session, data: bytes | str, person: Person | None, source: str = "api") -> AddedCheckpoint:
    """Verify a scanned checkpoint under its terminal's certified key and store it (the caller commits).

    Adding the same slip twice returns the stored row (``created`` False) and audits nothing.

    :param data: the QR text (``HBCP1:…``) or the COSE_Sign1 bytes.
    :param person: who added it (audited), None for the system.
    :param source: ``api`` or ``cli``.
    :raises InvalidCheckpoint: malformed, unknown terminal, bad signature, or a terminal id
        other than the key's terminal (``reason`` says which).
    """
    message = checkpoint_bytes(data)
    digest = hashlib.sha256(message).digest()
    stored = session.scalars(select(TerminalCheckpoint).where(TerminalCheckpoint.message_sha256 == digest)).first()
    if stored is not None:
        return AddedCheckpoint(stored, created=False)
    seen, resolve = _resolver(session)
    try:
        signed: SignedCheckpoint = verify_checkpoint(message, resolve)
    except UnknownKid as exc:
        raise InvalidCheckpoint(str(exc), reason="unknown_terminal") from exc
    except CheckpointError as exc:
        raise InvalidCheckpoint(str(exc), reason="malformed") from exc
    except RecordError as exc:  # MalformedCose, BadSignature, AlgorithmNotAllowed
        reason = "malformed" if isinstance(exc, MalformedCose) else "signature"
        raise InvalidCheckpoint(f"checkpoint does not verify: {exc}", reason=reason) from exc
    terminal = seen[signed.kid]
    c = signed.checkpoint
    if c.terminal_id != terminal.terminal_id:
        raise InvalidCheckpoint(f"checkpoint names terminal {c.terminal_id!r} but is signed by "
                                f"{terminal.terminal_id!r}'s key", reason="mismatch")
    row = TerminalCheckpoint(
        terminal_id=terminal.terminal_id, boot_id=c.boot_id, head_seq=c.head_seq, head_hash=c.head_hash,
        first_seq=c.first_seq, signed_at=dt.datetime.fromtimestamp(c.wall_ms / 1000, dt.UTC),
        totals=json.dumps([{"programme": t.programme, "unit": t.unit, "count": t.count, "amount": t.amount}
                           for t in c.totals]),
        declined=c.declined, message=message, message_sha256=digest, added_by=person.id if person else None,
        kid=signed.kid, source=source,
    )
    session.add(row)
    session.flush()
    audit(session, person, "checkpoint.add", terminal.terminal_id, head_seq=c.head_seq,
          head_hash=c.head_hash.hex(), boot_id=c.boot_id, source=source)
    return AddedCheckpoint(row, created=True)
