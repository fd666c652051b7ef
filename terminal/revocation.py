"""Revocation that does not exclude (docs/security.md): card states signed by a since-revoked terminal key.

A state a terminal wrote before its key was revoked at R stays the card's genuine state; the
NTAG tap (:mod:`terminal.tap`) and the secure tap (:mod:`terminal.secure_tap`) both verify the
card with :class:`RevocationGrace` and then ask :func:`revoked_writer` whether the state may be
served (under the stale floor of every cap: ``decide(at_floor=True)``) or must be declined
``revoked_key``.
"""

from __future__ import annotations

from cardlib.records import errors as rec
from cardlib.records.bundle import BundleKey, KeyRole, KeyState, TrustBundle
from cardlib.records.claims import IdentityClaims
from cardlib.records.cose import CoseKey, KeyResolver
from cardlib.records.session import CardState

__all__ = ["RevocationGrace", "revoked_signer", "revoked_writer"]


class RevocationGrace:
    """Card trust that still resolves terminal keys revoked at a time R (checked after verification).

    A state a terminal wrote before its key was revoked stays the card's genuine state
    (docs/security.md "Revocation that does not exclude"); :func:`revoked_writer` then
    requires its signed time to be before R. Issuer keys resolve exactly as the bundle says.

    :param bundle: the trust bundle in force.
    """

    def __init__(self, bundle: TrustBundle) -> None:
        self.bundle = bundle

    def resolver(self, role: KeyRole) -> KeyResolver:
        """The bundle's resolver, but for terminal keys one that also resolves revoked keys."""
        strict = self.bundle.resolver(role)
        if role is not KeyRole.TERMINAL:
            return strict

        def resolve(kid: bytes) -> CoseKey:
            k = self.bundle.key(kid)
            if k.role is KeyRole.TERMINAL and k.status is KeyState.REVOKED and k.status_time is not None:
                return CoseKey(k.kid, k.alg, k.public_key)
            return strict(kid)
        return resolve

    def check_card(self, claims: IdentityClaims, kid: bytes, uid: bytes) -> None:
        """:raises DeniedCard: the card is on the bundle's deny list (:meth:`TrustBundle.check_card`)."""
        self.bundle.check_card(claims, kid, uid)


def revoked_writer(bundle: TrustBundle, kid: bytes, signed_time: int,
                   predecessor_time: int | None = None) -> BundleKey | None:
    """The revoked key that signed a card state before its revocation, or None (a good key).

    :param kid: the state's signer (a terminal-role key the bundle lists).
    :param signed_time: the state's signed ``time``, POSIX seconds.
    :param predecessor_time: the signed ``time`` of the state it was written on, when the card
        still holds it (NTAG's other slot): a state is written after its predecessor.
    :raises RevokedKid: signed at or after the revocation time, or backdated: its predecessor was
        signed at or after the revocation time (so it was too, whatever its own time says). A
        predecessor merely newer than the state but before the revocation proves a wrong clock,
        not a write after the revocation: served.
    """
    k = bundle.key(kid)
    if k.status is not KeyState.REVOKED:
        return None
    if k.status_time is None or signed_time >= k.status_time:
        raise rec.RevokedKid(k.kid)
    if predecessor_time is not None and predecessor_time >= k.status_time:
        raise rec.RevokedKid(k.kid)  # backdated: written on a state signed after the revocation
    return k


def revoked_signer(bundle: TrustBundle, state: CardState) -> BundleKey | None:
    """:func:`revoked_writer` for an NTAG card's current state (its other slot is the predecessor).

    :raises RevokedKid: as :func:`revoked_writer`.
    """
    other = state.other
    predecessor = (other.claims.time if other is not None and other.claims.seq < state.current.claims.seq
                   else None)
    return revoked_writer(bundle, state.current.cose.kid, state.current.claims.time, predecessor)
