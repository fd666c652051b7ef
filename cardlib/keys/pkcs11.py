"""PKCS#11 key storage (OASIS PKCS#11 v2.40 / v3.0) behind the :class:`Signer` interface.

The only module that imports ``python-pkcs11`` (extra ``pkcs11``). Keys are generated on
the token (``CKA_SENSITIVE``, not extractable), found again by ``CKA_ID = kid`` and
used through:

- Ed25519: ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` + ``CKM_EDDSA`` (PKCS#11 v3.0 §2.3.14;
  SoftHSM2 ≥ 2.6 implements it; verified with SoftHSM2 2.6.1 and python-pkcs11 0.7.0);
- P-256: ``CKM_EC_KEY_PAIR_GEN`` + ``CKM_ECDSA`` over a SHA-256 digest computed here
  (PKCS#11 v2.40 §2.3.6), whose output is already ``r || s`` as COSE wants.

Tokens that lack ``CKM_EDDSA`` (many HSMs and smart cards) can use ES256.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from types import TracebackType
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PinIncorrect, PinLenRange, PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters

from cardlib.keys.errors import KeyNotFoundError, Pkcs11Error, UnsupportedAlgorithmError
from cardlib.keys.signer import PublicKey, Signer, derive_kid, public_key_from_raw
from cardlib.records.cose import Algorithm

_log = logging.getLogger(__name__)

_OID_ED25519 = "1.3.101.112"  # RFC 8410 §3
_OID_P256 = "1.2.840.10045.3.1.7"  # RFC 5480 §2.1.1.1 (secp256r1)
_ED25519_LEN = 32
_P256_POINT_LEN = 65  # uncompressed SEC 1 point
_DER_OCTET_STRING = 0x04


def _unwrap_ec_point(alg: Algorithm, value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING on most tokens, raw on some: accept both."""
    raw_len = _ED25519_LEN if alg == Algorithm.EDDSA else _P256_POINT_LEN
    if len(value) == raw_len:
        return value
    if len(value) == raw_len + 2 and value[0] == _DER_OCTET_STRING and value[1] == raw_len:
        return value[2:]
    raise Pkcs11Error(f"unexpected CKA_EC_POINT of {len(value)} bytes for {alg.name}")


class Pkcs11Signer(Signer):
    """A private key on a PKCS#11 token; it never leaves the token.

    Signing is serialised: a PKCS#11 session runs one operation at a time (PKCS#11 v2.40
    §5.2 "Sessions"), and a counter signs from its tap and sync threads.
    """

    def __init__(self, private_key: Any, alg: Algorithm, public_key: PublicKey) -> None:
        self._priv = private_key
        self._alg = alg
        self._pub = public_key
        self._lock = threading.Lock()

    @property
    def public_key(self) -> PublicKey:
        return self._pub

    @property
    def alg(self) -> Algorithm:
        return self._alg

    def sign(self, data: bytes) -> bytes:
        try:
            with self._lock:
                if self._alg == Algorithm.EDDSA:
                    return bytes(self._priv.sign(data, mechanism=Mechanism.EDDSA))
                digest = hashlib.sha256(data).digest()
                return bytes(self._priv.sign(digest, mechanism=Mechanism.ECDSA))
        except PKCS11Error as exc:
            raise Pkcs11Error(f"token refused to sign: {type(exc).__name__}") from exc

    def __repr__(self) -> str:
        return f"Pkcs11Signer(kid={self.kid.hex()}, alg={self._alg.name})"


class Pkcs11Token:
    """A logged-in read/write session on one PKCS#11 token. Use as a context manager.

    :param module_path: the PKCS#11 module, e.g. ``/usr/lib/softhsm/libsofthsm2.so``.
    :param token_label: the token's label (CKA_LABEL of the token, PKCS#11 §5.5).
    :param pin: the user PIN. Pass it from a prompt or file, never a CLI argument.
    :raises Pkcs11Error: when the module does not load, the token is absent or the PIN
        is wrong.
    """

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        try:
            lib = pkcs11.lib(module_path)
            token = lib.get_token(token_label=token_label)
            self._session = token.open(rw=True, user_pin=pin)
        except (PinIncorrect, PinLenRange) as exc:
            raise Pkcs11Error(f"wrong PIN for token {token_label!r}") from exc
        except pkcs11.exceptions.NoSuchToken as exc:
            raise Pkcs11Error(f"no PKCS#11 token labelled {token_label!r}") from exc
        except (PKCS11Error, RuntimeError, OSError) as exc:
            raise Pkcs11Error(
                f"cannot open PKCS#11 token {token_label!r} via {module_path}: {exc!r}"
            ) from exc
        self.token_label = token_label

    def close(self) -> None:
        """Log out and close the session. Idempotent."""
        if self._session is not None:
            try:
                self._session.close()
            except PKCS11Error as exc:
                _log.warning("closing PKCS#11 session failed: %r", exc)
            self._session = None

    def __enter__(self) -> Pkcs11Token:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def generate(self, alg: Algorithm, label: str) -> Pkcs11Signer:
        """Generate a non-extractable key pair on the token and tag it with its kid.

        :param alg: EDDSA (Ed25519) or ES256 (P-256).
        :param label: CKA_LABEL for both objects (e.g. ``"huma-bundle"``).
        :raises Pkcs11Error: when the token lacks the mechanism or refuses.
        """
        if alg == Algorithm.EDDSA:
            key_type, oid, mech = KeyType.EC_EDWARDS, _OID_ED25519, Mechanism.EC_EDWARDS_KEY_PAIR_GEN
        elif alg == Algorithm.ES256:
            key_type, oid, mech = KeyType.EC, _OID_P256, Mechanism.EC_KEY_PAIR_GEN
        else:
            raise UnsupportedAlgorithmError(f"unsupported algorithm {alg!r}")
        try:
            params = self._session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(oid)}, local=True
            )
            pub, priv = params.generate_keypair(
                store=True,
                label=label,
                mechanism=mech,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
            public_key = public_key_from_raw(alg, _unwrap_ec_point(alg, bytes(pub[Attribute.EC_POINT])))
            kid = derive_kid(public_key)
            pub[Attribute.ID] = kid
            priv[Attribute.ID] = kid
        except PKCS11Error as exc:
            raise Pkcs11Error(f"key generation on token failed: {type(exc).__name__}") from exc
        _log.info("generated %s key kid=%s on token %r", alg.name, kid.hex(), self.token_label)
        return Pkcs11Signer(priv, alg, public_key)

    def signer(self, kid: bytes) -> Pkcs11Signer:
        """Find the key pair tagged ``CKA_ID = kid``.

        :raises KeyNotFoundError: when the token has no such private key.
        :raises Pkcs11Error: on token errors.
        """
        return self._find({Attribute.ID: kid}, f"kid {kid.hex()}", kid)

    def signer_by_label(self, label: str) -> Pkcs11Signer:
        """Find the one key pair labelled ``label`` (CKA_LABEL), e.g. a counter's ``huma-terminal``.

        :raises KeyNotFoundError: no such key pair, or more than one (ambiguous).
        :raises Pkcs11Error: on token errors.
        """
        return self._find({Attribute.LABEL: label}, f"label {label!r}", None)

    def has_label(self, label: str) -> bool:
        """Whether the token holds any private key labelled ``label``."""
        try:
            return bool(list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                        Attribute.LABEL: label})))
        except PKCS11Error as exc:
            raise Pkcs11Error(f"token search failed: {type(exc).__name__}") from exc

    def _find(self, template: dict[Any, Any], what: str, kid: bytes | None) -> Pkcs11Signer:
        try:
            privs = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, **template}))
            pubs = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, **template}))
        except PKCS11Error as exc:
            raise Pkcs11Error(f"token search failed: {type(exc).__name__}") from exc
        if len(privs) != 1 or len(pubs) != 1:
            raise KeyNotFoundError(f"token {self.token_label!r} has no single key pair with {what} "
                                   f"({len(privs)} private, {len(pubs)} public)")
        key_type = pubs[0][Attribute.KEY_TYPE]
        alg = Algorithm.EDDSA if key_type == KeyType.EC_EDWARDS else Algorithm.ES256
        public_key = public_key_from_raw(alg, _unwrap_ec_point(alg, bytes(pubs[0][Attribute.EC_POINT])))
        if kid is not None and derive_kid(public_key) != kid:
            raise Pkcs11Error(f"token object with CKA_ID {kid.hex()} holds another public key")
        return Pkcs11Signer(privs[0], alg, public_key)
