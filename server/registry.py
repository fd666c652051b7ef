"""Card registry from the provisioning station's signed issuance files, and its deny-list share.

A provisioning session ends with an issuance file (:func:`cardlib.provision.session.sign_issuance_file`):
a COSE_Sign1 by the technician's key over every card id the session used, each
``issued`` or ``abandoned``, with the card a re-issue replaces and, optionally, the
issuer's session grant (quota). The server

1. verifies it against the newest stored trust bundle, itself verified under the
   configured root (``TRUST_ROOT_CERT``): technician key listed with role TECHNICIAN,
   grant signed by an ISSUER key and not exceeded
   (:func:`cardlib.provision.session.verify_issuance_file`);
2. stores one :class:`server.models.Card` row per card id, insert-or-ignore: the same
   file twice gives ``duplicate`` results, another chip/issuer/status for a known card
   id gives ``conflict`` (the first report is kept);
3. offers abandoned card ids and the cards that re-issued ones replace as deny-list
   candidates for the next bundle (:func:`registry_deny_candidates`), next to the
   auditors' confirmed clones (:func:`server.reconcile.engine.deny_list_candidates`);
   :func:`next_deny_sets` merges both through :func:`server.reconcile.engine.deny_sets`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from cardlib.keys.errors import UnsupportedAlgorithmError
from cardlib.keys.signer import PublicKey, algorithm_of
from cardlib.provision.errors import QuotaExceeded, SessionError
from cardlib.provision.session import IssuanceFile, IssuanceStatus, verify_issuance_file
from cardlib.records.bundle import KeyRole, SortedIdSet, TrustBundle, verify_bundle
from cardlib.records.errors import RecordError
from server.errors import ConfigurationError, Conflict, InvalidIssuanceFile
from server.models import Card
from server.models import TrustBundle as StoredBundle
from server.reconcile.engine import DenyCandidate, deny_list_candidates, deny_sets
from server.types import UTC
from server.upload import insert_or_ignore

__all__ = ["CardResult", "RegistryOutcome", "load_root_key", "newest_bundle", "next_deny_sets",
           "register_issuance_file", "registry_deny_candidates"]

#: NTAG21x UID length; the bundle's UID deny list carries 7-byte UIDs (cardlib/records/bundle.py).
_UID_LENGTH = 7


class RegistryOutcome(str, enum.Enum):
    """What happened to one card id of an issuance file."""

    ACCEPTED = "accepted"  #: new in the registry
    DUPLICATE = "duplicate"  #: already registered with the same chip, issuer key and status
    CONFLICT = "conflict"  #: the card id is registered with another chip, key or status (first kept)


@dataclass(frozen=True)
class CardResult:
    """:ivar card_id: 16 hex digits. :ivar result: see :class:`RegistryOutcome`."""

    card_id: str
    result: RegistryOutcome


def load_root_key(path: str | Path) -> PublicKey:
    """The pinned root public key from a PEM certificate (keystore ``certs/<root kid>.crt.pem``) or PEM key.

    :raises ConfigurationError: unreadable, or not an Ed25519 / P-256 key.
    """
    try:
        data = Path(path).read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
        algorithm_of(key)  # type: ignore[arg-type]
    except (OSError, ValueError, UnsupportedAlgorithmError) as exc:
        raise ConfigurationError(f"cannot load the trust root {path}: {exc}") from exc
    return key  # type: ignore[return-value]


def newest_bundle(session: Session, root: PublicKey) -> TrustBundle:
    """The highest-version stored bundle, verified under ``root`` (cardlib.records.bundle.verify_bundle).

    :raises Conflict: no bundle published yet (nothing lists the technician keys), or the
        newest one does not verify under the configured root (publish a good one).
    """
    blob = session.scalars(select(StoredBundle.blob).order_by(StoredBundle.version.desc()).limit(1)).first()
    if blob is None:
        raise Conflict("no trust bundle published: technician keys are unknown")
    try:
        return verify_bundle(blob, root)
    except RecordError as exc:
        raise Conflict(f"the newest stored trust bundle does not verify under TRUST_ROOT_CERT: {exc}") from exc


def register_issuance_file(session: Session, message: bytes, bundle: TrustBundle,
                           technician_person_id: int) -> tuple[IssuanceFile, list[CardResult]]:
    """Verify an issuance file and store its card ids (insert-or-ignore; caller commits).

    :param message: the file's COSE_Sign1 bytes.
    :param bundle: the verified trust bundle in force (technician and issuer keys).
    :param technician_person_id: the logged-in person uploading it (kept on new rows).
    :returns: the verified file and a result per card id, in file order.
    :raises InvalidIssuanceFile: ``reason`` ``signature`` (bad or unknown/revoked
        technician key, grant for someone else, malformed) or ``quota`` (more card ids
        than the grant allows).
    """
    try:
        f = verify_issuance_file(message, bundle.resolver(KeyRole.TECHNICIAN), bundle.resolver(KeyRole.ISSUER))
    except QuotaExceeded as exc:
        raise InvalidIssuanceFile(str(exc), reason="quota") from exc
    except SessionError as exc:
        raise InvalidIssuanceFile(str(exc), reason="signature") from exc
    now = dt.datetime.now(UTC)
    rows = [{
        "card_id": i.card_id.hex(), "tag_uid": i.uid, "kid": i.issuer_kid, "technician_id": technician_person_id,
        "issued_at": dt.datetime.fromtimestamp(i.time, UTC), "created_at": now, "status": i.status.value,
        "reissue_of": i.reissue_of.hex() if i.reissue_of else None, "session_id": f.session_id,
    } for i in f.issuances]
    results: list[CardResult] = []
    if not rows:
        return f, results
    inserted = set(session.scalars(insert_or_ignore(session, Card).returning(Card.card_id), rows).all())
    known = {c.card_id: c for c in session.scalars(select(Card).where(Card.card_id.in_([r["card_id"] for r in rows])))}
    for r in rows:
        row = known[r["card_id"]]
        if r["card_id"] in inserted:
            outcome = RegistryOutcome.ACCEPTED
        elif (row.tag_uid, row.kid, row.status, row.reissue_of) == (r["tag_uid"], r["kid"], r["status"], r["reissue_of"]):
            outcome = RegistryOutcome.DUPLICATE
        else:
            outcome = RegistryOutcome.CONFLICT
        results.append(CardResult(r["card_id"], outcome))
    return f, results


def registry_deny_candidates(session: Session) -> list[DenyCandidate]:
    """Card ids the registry says must never be honoured again, as deny-list candidates.

    - ``abandoned`` card ids (written partly, never finished): the card id only; the
      chip may come back and be finished under it, or be wiped and issued anew.
    - cards replaced by a re-issue (lost or stolen): the card id and its chip UID.

    :returns: sorted by card id; ``finding_ids`` empty (the evidence is the issuance file).
    """
    replaced = select(Card.reissue_of).where(Card.reissue_of.is_not(None),
                                             Card.status == IssuanceStatus.ISSUED.value)
    abandoned = {c for (c,) in session.execute(select(Card.card_id).where(Card.status == IssuanceStatus.ABANDONED.value))}
    lost = {c for (c,) in session.execute(replaced)}
    uids: dict[str, bytes] = {c: u for c, u in session.execute(
        select(Card.card_id, Card.tag_uid).where(Card.card_id.in_(replaced)))}
    return [DenyCandidate(c, (uids[c],) if c in lost and c in uids else (), ())
            for c in sorted(abandoned | lost)]


def next_deny_sets(session: Session, extra: Sequence[DenyCandidate] = ()) -> tuple[SortedIdSet, SortedIdSet]:
    """The deny lists for the next bundle: confirmed clones/fraud (reconciliation) + the registry's.

    :returns: ``(deny_cards, deny_uids)`` as :func:`server.reconcile.engine.deny_sets` builds them.
    :raises ValueError: a candidate card id that is not 16 hex digits.
    """
    return deny_sets([*deny_list_candidates(session), *registry_deny_candidates(session), *extra])
