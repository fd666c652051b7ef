"""Red team round 3, a fake server at enrolment: the counter pins whatever the certificate answer says.

Every later server answer is checked against the receipt key pinned at enrolment (docs/security.md
"Server answers are signed"), and the first bundle against the version pinned then. Both come from
one unauthenticated answer (``GET /api/v1/terminals/<id>/certificate``): nothing ties the receipt
key to the root, the certificate is not checked (not even that it certifies the counter's own key),
and the pinned bundle version is unbounded. Whoever answers in the server's place at that moment
(a TLS-intercepting proxy, a mis-issued certificate, a technician's typo in ``server_url``) then:

- holds a key the counter obeys: its receipts mark entries uploaded (exposure reset, the entries
  never offered to the real server again), its signed "time" lowers the counter's time mark (the
  clock-set-back defence), its freshness statements keep an old bundle (old deny list) fresh;
- or pins version 2^62, so the real server's bundles are refused for good (no deny list updates,
  the bundle expires: cash stops — a denial for every household of that counter).

The test asserts the DEFENCE (enrol refuses the answer, pins nothing); it fails while the attack works.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.test_terminal_support import TrustKit, make_counter

ROGUE = ed25519.Ed25519PrivateKey.generate()
ROGUE_PEM = ROGUE.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
BOGUS_CERT = "-----BEGIN CERTIFICATE-----\nTUlUTSBwcm94eQ==\n-----END CERTIFICATE-----\n"


class _Fake(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(202, {"status": "pending"})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._answer(200, {"certificate": BOGUS_CERT, "receipt_key": ROGUE_PEM,
                           "bundle": {"version": 2**62, "sha256": "00" * 32}})


@pytest.fixture
def fake_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_enrolment_does_not_pin_a_receipt_key_and_bundle_version_nobody_vouches_for(tmp_path: Path,
                                                                                     fake_server: str) -> None:
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import enrol, pinned_server_key_path
    from terminal.errors import TerminalError
    from terminal.trust import pin_path

    kit = TrustKit()
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)], terminal_id="T-6271-0777",
                         server_url=fake_server, install_bundle=False)
    profile = load_terminal_profile(files.profile)
    refused = False
    try:
        enrol(profile, 0.0, code="AAAA-BBBB-CCCC-DDDD", sleep=lambda _s: None)
    except TerminalError:
        refused = True
    pinned = pinned_server_key_path(profile).read_text()
    pin = pin_path(profile.bundle_path)
    pinned_version = json.loads(pin.read_text())["version"] if pin.exists() else None
    assert refused and pinned != ROGUE_PEM and pinned_version != 2**62, (
        f"enrolment took a fake server's answer: rogue receipt key pinned={pinned == ROGUE_PEM}, "
        f"bundle version pinned={pinned_version}, certificate saved={BOGUS_CERT in _cert_text(profile)}")


def _cert_text(profile: object) -> str:
    from terminal.enrol import certificate_path

    path = certificate_path(profile)  # type: ignore[arg-type]
    return path.read_text() if path.exists() else ""


def test_a_fake_enrolment_answer_cannot_lock_out_the_real_servers_bundles(tmp_path: Path, fake_server: str) -> None:
    """The consequence of the pinned version 2^62: the province's genuine, root-endorsed bundle is refused."""
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import enrol
    from terminal.errors import TerminalError
    from terminal.sync import TrustStore

    kit = TrustKit()
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)], terminal_id="T-6271-0778",
                         server_url=fake_server, install_bundle=False)
    profile = load_terminal_profile(files.profile)
    with contextlib.suppress(TerminalError):  # the defence: the answer was refused
        enrol(profile, 0.0, code="AAAA-BBBB-CCCC-DDDD", sleep=lambda _s: None)
    _b, genuine = kit.bundle(1, terminals=(files.signer,))
    try:
        TrustStore(files.state / "bundle.cose", kit.root.public_key).install(genuine, None)
    except TerminalError as exc:
        pytest.fail(f"the real server's bundle v1 is refused after a fake enrolment answer: {exc}")


def test_polling_the_certificate_again_does_not_replace_an_enrolled_counters_pinned_key(
        tmp_path: Path, fake_server: str) -> None:
    """``huma terminal enrol`` without ``--code`` (fetch the certificate again) on a counter already enrolled:
    whoever answers replaces the receipt key it pinned, the anchor of every later check."""
    from firmware_config.loader import load_terminal_profile
    from terminal.enrol import enrol, pinned_server_key_path
    from terminal.errors import TerminalError

    kit = TrustKit()
    files = make_counter(tmp_path / "c", kit, readers={}, bindings=[("acr122u", None)], terminal_id="T-6271-0779",
                         server_url=fake_server)
    profile = load_terminal_profile(files.profile)
    before = pinned_server_key_path(profile).read_text()
    with contextlib.suppress(TerminalError):
        enrol(profile, 0.0, sleep=lambda _s: None)
    after = pinned_server_key_path(profile).read_text()
    assert after == before, "a certificate poll answered by a fake server replaced the pinned server receipt key"
