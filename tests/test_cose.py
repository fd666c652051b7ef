"""COSE_Sign1 (RFC 9052 §4.2, §4.4): published vectors, pycose cross-checks, every rejection."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.algorithms import EdDSA as PyEdDSA
from pycose.algorithms import Es256 as PyEs256
from pycose.headers import KID as PyKID
from pycose.headers import Algorithm as PyAlgorithm
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import CoseMessage, Sign1Message

from cardlib.errors import CardlibError
from cardlib.records import cose
from cardlib.records.cose import Algorithm, CoseKey, sign1, verify1
from cardlib.records.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    MalformedCose,
    RecordError,
    RevokedKid,
    UnknownKid,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "cose_vectors.json").read_text())
KID = bytes.fromhex("a1b2c3d4")
AAD = b"HB1i" + bytes.fromhex("04a1b2c3d4e5f6")


def _b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _vector_key(name: str) -> tuple[CoseKey, object]:
    spec = VECTORS["cose_wg_keys"][name]
    kid = spec["kid"].encode()
    if spec["kty"] == "EC":
        d = int.from_bytes(_b64u(spec["d"]), "big")
        private = ec.derive_private_key(d, ec.SECP256R1())
        x, y = _b64u(spec["x"]), _b64u(spec["y"])
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
        assert private.public_key().public_numbers() == public.public_numbers()
        return CoseKey(kid, Algorithm.ES256, public), private
    private_ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["d_hex"]))
    public_ed = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(spec["x_hex"]))
    return CoseKey(kid, Algorithm.EDDSA, public_ed), private_ed


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())


# --------------------------------------------------------------------------- published vectors


@pytest.mark.parametrize("vec", VECTORS["rfc8032_ed25519"], ids=lambda v: v["name"])
def test_rfc8032_section_7_1_ed25519_vectors(vec: dict[str, str]) -> None:
    """The Ed25519 primitive we build on reproduces RFC 8032 §7.1 exactly."""
    private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vec["secret"]))
    assert private.public_key().public_bytes_raw() == bytes.fromhex(vec["public"])
    assert private.sign(bytes.fromhex(vec["message"])) == bytes.fromhex(vec["signature"])


@pytest.mark.parametrize("vec", VECTORS["cose_wg_sign1"], ids=lambda v: v["file"])
def test_cose_wg_sign1_examples(vec: dict[str, str]) -> None:
    """Each COSE WG example verifies, or fails with the error class its failure implies."""
    key, _ = _vector_key(vec["key"])
    message = bytes.fromhex(vec["cbor"])
    external = bytes.fromhex(vec["external"])
    if vec["expect"] == "pass":
        verified = verify1(message, {key.kid: key}, external_aad=external)
        assert verified.payload == vec["payload"].encode()
        assert verified.kid == b"11"
        assert verified.message == message
        assert verified.protected in message
    else:
        expected = getattr(cose, vec["expect"])
        with pytest.raises(expected):
            verify1(message, {key.kid: key}, external_aad=external)


def test_cose_wg_external_aad_is_bound() -> None:
    """sign-pass-02 without its external AAD must not verify."""
    vec = next(v for v in VECTORS["cose_wg_sign1"] if v["file"].endswith("sign-pass-02.json"))
    key, _ = _vector_key(vec["key"])
    with pytest.raises(BadSignature):
        verify1(bytes.fromhex(vec["cbor"]), {key.kid: key}, external_aad=b"")


def test_eddsa_sig_01_is_reproduced_byte_for_byte() -> None:
    """Ed25519 is deterministic: our signer gives the COSE WG bytes for the same inputs.

    eddsa-sig-01 has protected {1: -8, 3: 0}; rebuild it with our Sig_structure.
    """
    vec = next(v for v in VECTORS["cose_wg_sign1"] if v["file"].endswith("eddsa-sig-01.json"))
    _, private = _vector_key(vec["key"])
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    protected = bytes.fromhex("A201270300")
    tbs = cose.sig_structure(protected, b"", b"This is the content.")
    expected = cbor2.loads(bytes.fromhex(vec["cbor"])).value[3]
    assert private.sign(tbs) == expected


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("alg", [Algorithm.EDDSA, Algorithm.ES256])
@pytest.mark.parametrize("tagged", [True, False])
def test_sign_verify_round_trip(
    alg: Algorithm,
    tagged: bool,
    ed_key: ed25519.Ed25519PrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    private = ed_key if alg is Algorithm.EDDSA else p256_key
    key = CoseKey(KID, alg, private.public_key())
    payload = cbor2.dumps({1: 7, 2: b"\x00" * 8})
    message = sign1(payload, private, KID, alg, external_aad=AAD, tagged=tagged)
    assert (message[0] == 0xD2) is tagged
    verified = verify1(message, lambda kid: key, external_aad=AAD)
    assert (verified.payload, verified.kid, verified.alg) == (payload, KID, alg)
    assert verified.protected == cbor2.dumps({1: int(alg)})
    assert len(verified.signature) == 64


def test_signatures_are_deterministic(
    ed_key: ed25519.Ed25519PrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    """Both algorithms sign deterministically (RFC 8032 §5.1.6, RFC 6979): same input, same bytes."""
    for private, alg in ((ed_key, Algorithm.EDDSA), (p256_key, Algorithm.ES256)):
        first = sign1(b"x", private, KID, alg, external_aad=AAD)
        assert sign1(b"x", private, KID, alg, external_aad=AAD) == first


def test_record_size_is_81_bytes_plus_payload(ed_key: ed25519.Ed25519PrivateKey) -> None:
    """Tagged, protected {1: alg}, unprotected {4: kid(4)}, 24..255-byte payload: 81 B overhead."""
    payload = bytes(45)
    assert len(sign1(payload, ed_key, KID)) == 45 + 81


# --------------------------------------------------------------------------- pycose cross-checks


def test_pycose_verifies_our_eddsa_message(ed_key: ed25519.Ed25519PrivateKey) -> None:
    message = sign1(b"payload bytes", ed_key, KID, external_aad=AAD)
    decoded = CoseMessage.decode(message)
    decoded.key = OKPKey(crv=Ed25519, x=ed_key.public_key().public_bytes_raw())
    decoded.external_aad = AAD
    assert decoded.verify_signature()
    assert decoded.payload == b"payload bytes"
    assert decoded.get_attr(PyKID) == KID


def test_pycose_verifies_our_es256_message(p256_key: ec.EllipticCurvePrivateKey) -> None:
    message = sign1(b"payload bytes", p256_key, KID, Algorithm.ES256, external_aad=AAD)
    numbers = p256_key.public_key().public_numbers()
    decoded = CoseMessage.decode(message)
    decoded.key = EC2Key(
        crv=P256, x=numbers.x.to_bytes(32, "big"), y=numbers.y.to_bytes(32, "big")
    )
    decoded.external_aad = AAD
    assert decoded.verify_signature()


def test_we_verify_pycose_eddsa_message(ed_key: ed25519.Ed25519PrivateKey) -> None:
    raw = ed_key.private_bytes_raw()
    msg = Sign1Message(
        phdr={PyAlgorithm: PyEdDSA}, uhdr={PyKID: KID}, payload=b"from pycose", external_aad=AAD
    )
    msg.key = OKPKey(crv=Ed25519, d=raw, x=ed_key.public_key().public_bytes_raw())
    encoded = msg.encode()
    key = CoseKey(KID, Algorithm.EDDSA, ed_key.public_key())
    assert verify1(encoded, {KID: key}, external_aad=AAD).payload == b"from pycose"
    with pytest.raises(BadSignature):
        verify1(encoded, {KID: key}, external_aad=b"other chip")


def test_we_verify_pycose_es256_message(p256_key: ec.EllipticCurvePrivateKey) -> None:
    numbers = p256_key.private_numbers()
    msg = Sign1Message(
        phdr={PyAlgorithm: PyEs256}, uhdr={PyKID: KID}, payload=b"from pycose", external_aad=AAD
    )
    msg.key = EC2Key(
        crv=P256,
        d=numbers.private_value.to_bytes(32, "big"),
        x=numbers.public_numbers.x.to_bytes(32, "big"),
        y=numbers.public_numbers.y.to_bytes(32, "big"),
    )
    key = CoseKey(KID, Algorithm.ES256, p256_key.public_key())
    assert verify1(msg.encode(), {KID: key}, external_aad=AAD).payload == b"from pycose"


# --------------------------------------------------------------------------- rejections


def _body(message: bytes) -> list[object]:
    return list(cbor2.loads(message).value)


def _rebuild(body: list[object]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, body))


@pytest.fixture
def signed(ed_key: ed25519.Ed25519PrivateKey) -> tuple[bytes, CoseKey]:
    return (
        sign1(b"claims", ed_key, KID, external_aad=AAD),
        CoseKey(KID, Algorithm.EDDSA, ed_key.public_key()),
    )


def test_errors_share_one_root() -> None:
    for error in (MalformedCose, UnknownKid, RevokedKid, AlgorithmNotAllowed, BadSignature):
        assert issubclass(error, RecordError) and issubclass(error, CardlibError)


def test_unknown_kid(signed: tuple[bytes, CoseKey]) -> None:
    message, _ = signed
    with pytest.raises(UnknownKid) as info:
        verify1(message, {}, external_aad=AAD)
    assert info.value.kid == KID


def test_revoked_kid_from_resolver(signed: tuple[bytes, CoseKey]) -> None:
    message, _ = signed

    def resolver(kid: bytes) -> CoseKey:
        raise RevokedKid(kid)

    with pytest.raises(RevokedKid):
        verify1(message, resolver, external_aad=AAD)


def test_resolver_returning_another_kid_is_unknown(
    signed: tuple[bytes, CoseKey], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    message, _ = signed
    other = CoseKey(b"zzzz", Algorithm.EDDSA, ed_key.public_key())
    with pytest.raises(UnknownKid):
        verify1(message, lambda kid: other, external_aad=AAD)


def test_algorithm_not_whitelisted_for_kid(
    signed: tuple[bytes, CoseKey], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    """An ES256 message for a kid whitelisted for EdDSA is refused before any crypto."""
    _, key = signed
    es_private = ec.derive_private_key(99, ec.SECP256R1())
    message = sign1(b"claims", es_private, KID, Algorithm.ES256, external_aad=AAD)
    with pytest.raises(AlgorithmNotAllowed):
        verify1(message, {KID: key}, external_aad=AAD)


def test_wrong_aad_is_bad_signature(signed: tuple[bytes, CoseKey]) -> None:
    message, key = signed
    with pytest.raises(BadSignature):
        verify1(message, {KID: key}, external_aad=AAD[:-1] + b"\x00")


def test_flipped_payload_bit_is_bad_signature(signed: tuple[bytes, CoseKey]) -> None:
    message, key = signed
    body = _body(message)
    body[2] = b"claimt"
    with pytest.raises(BadSignature):
        verify1(_rebuild(body), {KID: key}, external_aad=AAD)


def test_short_signature_is_bad_signature(signed: tuple[bytes, CoseKey]) -> None:
    message, key = signed
    body = _body(message)
    body[3] = body[3][:63]  # type: ignore[index]
    with pytest.raises(BadSignature):
        verify1(_rebuild(body), {KID: key}, external_aad=AAD)


def test_verification_uses_protected_bytes_as_read(
    signed: tuple[bytes, CoseKey], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    """A non-preferred but equivalent protected encoding is refused, never re-encoded to pass."""
    message, key = signed
    body = _body(message)
    body[0] = bytes.fromhex("A1 01 38 07".replace(" ", ""))  # {1: -8} with a 1-byte-argument int
    with pytest.raises(MalformedCose):
        verify1(_rebuild(body), {KID: key}, external_aad=AAD)


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda m: m[:-1], "truncated"),
        (lambda m: m + b"\x00", "trailing byte"),
        (lambda m: b"", "empty"),
        (lambda m: b"\xff", "not CBOR"),
        (lambda m: cbor2.dumps(cbor2.CBORTag(17, _body(m))), "COSE_Mac0 tag"),
        (lambda m: cbor2.dumps(_body(m)[:3]), "3 elements"),
        (lambda m: cbor2.dumps({1: 2}), "map"),
        (lambda m: _rebuild([cbor2.loads(_body(m)[0])] + _body(m)[1:]), "protected not bstr"),
        (lambda m: _rebuild([_body(m)[0], [], *_body(m)[2:]]), "unprotected not a map"),
        (lambda m: _rebuild([*_body(m)[:2], None, _body(m)[3]]), "detached payload"),
        (lambda m: _rebuild([*_body(m)[:2], "text", _body(m)[3]]), "payload text"),
        (lambda m: _rebuild([*_body(m)[:3], "sig"]), "signature text"),
        (lambda m: _rebuild([b"", {1: -8, 4: KID}, *_body(m)[2:]]), "alg unprotected"),
        (lambda m: _rebuild([b"", {4: KID}, *_body(m)[2:]]), "no alg"),
        (lambda m: _rebuild([_body(m)[0], {}, *_body(m)[2:]]), "no kid"),
        (lambda m: _rebuild([_body(m)[0], {4: "kid"}, *_body(m)[2:]]), "kid text"),
        (lambda m: _rebuild([_body(m)[0], {4: KID, 1: -8}, *_body(m)[2:]]), "alg in both"),
        (lambda m: _rebuild([bytes.fromhex("A2012702 81 01".replace(" ", "")), *_body(m)[1:]]), "crit"),
        (lambda m: _rebuild([bytes.fromhex("A101270101"), *_body(m)[1:]]), "protected trailing"),
        (lambda m: _rebuild([bytes.fromhex("A2012701 26".replace(" ", "")), *_body(m)[1:]]), "dup label"),
        (lambda m: _rebuild([bytes.fromhex("80"), *_body(m)[1:]]), "protected array"),
        (lambda m: _rebuild([bytes.fromhex("A1182A01"), *_body(m)[1:]]), "unknown protected label"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_malformed(signed: tuple[bytes, CoseKey], mutate: object, why: str) -> None:
    message, key = signed
    assert callable(mutate)
    with pytest.raises(MalformedCose):
        verify1(mutate(message), {KID: key}, external_aad=AAD)


def test_key_type_must_fit_algorithm(
    ed_key: ed25519.Ed25519PrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError):
        CoseKey(KID, Algorithm.ES256, ed_key.public_key())
    with pytest.raises(ValueError):
        CoseKey(KID, Algorithm.EDDSA, p256_key.public_key())
    with pytest.raises(ValueError):
        CoseKey(
            KID, Algorithm.ES256, ec.generate_private_key(ec.SECP384R1()).public_key()
        )
    with pytest.raises(ValueError):
        sign1(b"x", ed_key, KID, Algorithm.ES256)
    with pytest.raises(ValueError):
        CoseKey(b"", Algorithm.EDDSA, ed_key.public_key())
