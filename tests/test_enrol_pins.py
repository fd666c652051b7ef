"""What a counter pins at enrolment comes from the root's chain, never from the answer's word alone.

docs/security.md "Enrolment: the counter's pins". Each test answers the certificate request
from a server of its own on 127.0.0.1 (the answer a relay, a TLS-intercepting proxy or the
real server would give), built with a terminal CA the test root certified, as
``huma keys issue terminal-ca`` does. The red team's fake-server attacks are in
tests/test_redteam_r3_fake_enrolment.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from cardlib.keys.keystore import _ca_certificate, root_common_name, terminal_ca_common_name
from cardlib.keys.receipt_cert import RECEIPT_KEY_USAGE, verify_receipt_certificate, verify_terminal_ca
from cardlib.keys.signer import SoftwareSigner, cose_key, spki_der
from cardlib.keys.terminal_ca import TerminalCA, make_terminal_csr
from terminal.enrol import EnrolmentAnswerRefused, certificate_path, csr_path, enrol, load_receipt_key
from terminal.trust import pin_path
from tests.enrol_support import unpin_receipt_key
from tests.test_terminal_support import TrustKit, make_counter, new_signer


def chained_ca(root: SoftwareSigner) -> TerminalCA:
    """A terminal CA whose certificate ``root`` signed (``huma keys issue terminal-ca``)."""
    signer = new_signer()
    now = int(time.time())
    cert = _ca_certificate(signer.public_key, terminal_ca_common_name(signer.kid), root, root_common_name(root.kid),
                           now - 300, now + 365 * 86400, path_length=0)
    return TerminalCA(signer, cert)


@dataclass
class Answers:
    """What the test server answers: the certificate JSON and the bundle bytes (None: 404)."""

    certificate: dict[str, Any] = field(default_factory=dict)
    bundle: bytes | None = None


def _handler(answers: Answers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(202, b'{"status": "pending"}', "application/json")

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path == "/api/v1/bundle":
                if answers.bundle is None:
                    self._send(404, b"{}", "application/json")
                else:
                    self._send(200, answers.bundle, "application/cbor")
                return
            self._send(200, json.dumps(answers.certificate).encode(), "application/json")

    return Handler


@dataclass
class Counter:
    kit: TrustKit
    ca: TerminalCA
    files: Any
    profile: Any
    answers: Answers

    def genuine(self, receipt: SoftwareSigner | None = None) -> dict[str, Any]:
        """The answer the real server gives: certificate for this counter's CSR, CA certificate, receipt key chain."""
        receipt = receipt or self.kit.receipt
        cert = self.ca.issue(csr_path(self.profile).read_bytes(), terminal_id=self.profile.terminal_id)
        return {"certificate": cert.decode(), "ca_certificate": self.ca.certificate_pem.decode(),
                "receipt_certificate": self.ca.certify_receipt_key(receipt.public_key).decode(),
                "receipt_key": receipt.public_key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()}


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Counter]:
    from firmware_config.loader import load_terminal_profile

    answers = Answers()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answers))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    kit = TrustKit()
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)], terminal_id="T-6271-0801",
                         server_url=f"http://127.0.0.1:{httpd.server_address[1]}", install_bundle=False)
    unpin_receipt_key(files.state)  # fresh from `huma terminal init`: nothing pinned yet
    try:
        yield Counter(kit, chained_ca(kit.root), files, load_terminal_profile(files.profile), answers)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _nothing_saved(c: Counter) -> bool:
    from terminal.enrol import pinned_server_key_path

    return not pinned_server_key_path(c.profile).exists() and not certificate_path(c.profile).exists() \
        and not pin_path(c.profile.bundle_path).exists()


def test_a_genuine_answer_pins_the_certified_key_and_the_verified_bundle(counter: Counter) -> None:
    c = counter
    c.answers.certificate = c.genuine()
    _bundle, data = c.kit.bundle(7)
    c.answers.bundle = data
    assert enrol(c.profile, 0.0, sleep=lambda _s: None) == certificate_path(c.profile)
    assert spki_der(load_receipt_key(c.profile)) == spki_der(c.kit.receipt.public_key)
    pin = json.loads(pin_path(c.profile.bundle_path).read_text())
    assert pin["version"] == 7 and pin["signer"] == cose_key(c.kit.bundle_key).kid.hex()


def test_a_terminal_certificate_is_no_receipt_key_certificate(counter: Counter) -> None:
    """Another counter's genuine certificate (same CA) offered as the receipt key: its key would then be obeyed."""
    c = counter
    _key, other_csr = make_terminal_csr("T-6271-0802")
    answer = c.genuine()
    answer["receipt_certificate"] = c.ca.issue(other_csr, terminal_id="T-6271-0802").decode()
    c.answers.certificate = answer
    with pytest.raises(EnrolmentAnswerRefused, match="receipt key"):
        enrol(c.profile, 0.0, sleep=lambda _s: None)
    assert _nothing_saved(c)


def test_a_certificate_for_another_key_is_refused(counter: Counter) -> None:
    c = counter
    _key, other_csr = make_terminal_csr(c.profile.terminal_id)  # the same terminal id, a key not this counter's
    answer = c.genuine()
    answer["certificate"] = c.ca.issue(other_csr, terminal_id=c.profile.terminal_id).decode()
    c.answers.certificate = answer
    with pytest.raises(EnrolmentAnswerRefused, match="another key"):
        enrol(c.profile, 0.0, sleep=lambda _s: None)
    assert _nothing_saved(c)


def test_a_ca_another_root_certified_is_refused(counter: Counter) -> None:
    """A complete, self-consistent chain under a root the counter was not provisioned with."""
    c = counter
    c.ca = chained_ca(new_signer())
    c.answers.certificate = c.genuine(receipt=new_signer())
    with pytest.raises(EnrolmentAnswerRefused, match="pinned root"):
        enrol(c.profile, 0.0, sleep=lambda _s: None)
    assert _nothing_saved(c)


def test_a_re_enrolment_keeps_the_pinned_key_even_against_a_certified_one(counter: Counter) -> None:
    c = counter
    c.answers.certificate = c.genuine()
    enrol(c.profile, 0.0, sleep=lambda _s: None)
    before = load_receipt_key(c.profile)
    cert_before = certificate_path(c.profile).read_bytes()
    c.answers.certificate = c.genuine(receipt=new_signer())  # validly certified, another key
    with pytest.raises(EnrolmentAnswerRefused, match="already pins"):
        enrol(c.profile, 0.0, sleep=lambda _s: None)
    assert spki_der(load_receipt_key(c.profile)) == spki_der(before)
    assert certificate_path(c.profile).read_bytes() == cert_before
    c.answers.certificate = c.genuine()  # the same key again: fine, idempotent
    assert enrol(c.profile, 0.0, sleep=lambda _s: None) == certificate_path(c.profile)


def test_the_technician_reset_pins_a_new_certified_key_and_records_it(counter: Counter) -> None:
    """The server lost its receipt key: ``huma terminal enrol --replace-server-key`` takes a new, certified one."""
    from terminal.enrol import pin_history_path

    c = counter
    c.answers.certificate = c.genuine()
    enrol(c.profile, 0.0, sleep=lambda _s: None)
    rogue = chained_ca(new_signer()).certify_receipt_key(new_signer().public_key).decode()
    c.answers.certificate = {**c.genuine(), "receipt_certificate": rogue}  # another root's CA: a reset refuses
    with pytest.raises(EnrolmentAnswerRefused):
        enrol(c.profile, 0.0, sleep=lambda _s: None, replace_receipt_key=True)
    assert spki_der(load_receipt_key(c.profile)) == spki_der(c.kit.receipt.public_key)
    assert not pin_history_path(c.profile).exists()
    new = new_signer()
    c.answers.certificate = c.genuine(receipt=new)
    assert enrol(c.profile, 0.0, sleep=lambda _s: None, replace_receipt_key=True) == certificate_path(c.profile)
    assert spki_der(load_receipt_key(c.profile)) == spki_der(new.public_key)
    (line,) = pin_history_path(c.profile).read_text().splitlines()
    record = json.loads(line)
    assert record["old_sha256"] != record["new_sha256"] and record["by"]


def test_a_bundle_that_does_not_verify_pins_nothing_and_enrolment_goes_on(counter: Counter) -> None:
    c = counter
    c.answers.certificate = c.genuine()
    c.answers.bundle = TrustKit().bundle(2**62 - 1)[1]  # signed, but under another root
    assert enrol(c.profile, 0.0, sleep=lambda _s: None) == certificate_path(c.profile)
    assert not pin_path(c.profile.bundle_path).exists()


def test_an_existing_pin_is_never_moved(counter: Counter) -> None:
    c = counter
    c.answers.certificate = c.genuine()
    c.answers.bundle = c.kit.bundle(3)[1]
    enrol(c.profile, 0.0, sleep=lambda _s: None)
    c.answers.bundle = c.kit.bundle(900)[1]  # genuine and newer: the trust store's floor rules decide, not enrol
    enrol(c.profile, 0.0, sleep=lambda _s: None)
    assert json.loads(pin_path(c.profile.bundle_path).read_text())["version"] == 3


def test_a_pin_from_a_revoked_bundle_key_stops_counting(tmp_path: Path) -> None:
    """A thief of the bundle key who answered the enrolment pins his version; the root's revocation ends it."""
    from cardlib.keys.keystore import KeyStore, Role
    from terminal.errors import TrustStoreError
    from terminal.trust import TrustStore, pin_enrolment_bundle
    from tests.test_bundle_trust_chain import KEY_PW, ROOT_PW, forge, legit, root_of, thief_kit

    ks = KeyStore.init(tmp_path / "ks", ROOT_PW)
    root = ks.root_signer(ROOT_PW)
    ks.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    now = int(time.time())
    bundle_path = tmp_path / "bundle.cose"
    assert pin_enrolment_bundle(bundle_path, forge(thief_kit(ks), 1000, now, now + 14 * 86400),
                                root_of(ks), now) == 1000
    store = TrustStore(bundle_path, root_of(ks))
    with pytest.raises(TrustStoreError, match="pinned at enrolment"):
        store.install(legit(ks, 2), None)
    ks.revoke(ks.active(Role.BUNDLE).kid, root)  # `huma keys revoke`, a new key, the next bundle
    ks.issue(Role.BUNDLE, root, passphrase=KEY_PW)
    assert store.install(legit(ks, 2), None) and store.version == 2


def test_the_receipt_key_usage_is_what_tells_the_two_certificates_apart() -> None:
    kit = TrustKit()
    ca = chained_ca(kit.root)
    verified = verify_terminal_ca(ca.certificate_pem, kit.root.public_key, time.time())
    key = verify_receipt_certificate(ca.certify_receipt_key(kit.receipt.public_key), verified, time.time())
    assert spki_der(key) == spki_der(kit.receipt.public_key)
    assert RECEIPT_KEY_USAGE.dotted_string.startswith("2.25.")


def test_enrolment_against_the_real_server_with_the_key_ceremonys_chain(tmp_path: Path, world: Any,
                                                                        live_server: Any) -> None:
    """The production chain: `huma keys init` + `issue terminal-ca`, the server configured with the
    encrypted CA key only (its certificate found in the keystore's certs/), the counter pinning the root."""
    from cardlib.keys.keystore import KeyStore, Role
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import pinned_server_key_path

    ks = KeyStore.init(tmp_path / "ks", b"root passphrase 2026")
    root = ks.root_signer(b"root passphrase 2026")
    entry = ks.issue(Role.TERMINAL_CA, root, passphrase=b"terminal ca passphrase 2026")
    config = world.client.application.config
    config.update(TERMINAL_CA_KEY=str(tmp_path / "ks" / "keys" / entry.location),
                  TERMINAL_CA_KEY_PASSWORD="terminal ca passphrase 2026", TERMINAL_CA_CERT=None)
    assert isinstance(root, SoftwareSigner)
    files = make_counter(tmp_path / "c", TrustKit(root=root), readers={}, bindings=[("acr122u", None)],
                         terminal_id="T-6271-0803", server_url=f"http://{live_server.host}:{live_server.port}")
    unpin_receipt_key(files.state)
    profile = load_terminal_profile(files.profile)
    assert enrol(profile, 0.0, code=world.enrolment_code("T-6271-0803")) is None
    world.approve("T-6271-0803")
    assert enrol(profile, 0.0) == certificate_path(profile)
    assert pinned_server_key_path(profile).exists()
