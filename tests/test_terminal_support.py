"""Shared builders for the terminal tests (no tests here).

- :class:`TrustKit`: a root key, an endorsed bundle key and signed bundle files;
- :func:`enrol_terminal`: enrol + approve a terminal key on the real server app;
- :class:`FaultProxy`: a loopback HTTP relay in front of the real waitress server
  that can drop the connection after the server answered (the answer is lost,
  the server has stored the batch) or answer 503 + Retry-After for a burst.
  Only the network fault is simulated; the server behind it is the real one.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import socket
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from cardlib.keys.keystore import Backend, KeyEntry, KeyStatus, Role, endorse
from cardlib.keys.signer import SoftwareSigner, cose_key
from cardlib.records.bundle import BundleKey, KeyRole, Programme, SortedIdSet, TrustBundle, sign_bundle

#: A valid programme list: counters refuse a bundle without programmes (cardlib.records.bundle.validate_programmes).
PROGRAMMES = (Programme(1, "food", "package", 1), Programme(2, "cash", "rupiah", 250_000),
              Programme(3, "health", "visit", 4))


def new_signer() -> SoftwareSigner:
    return SoftwareSigner(ed25519.Ed25519PrivateKey.generate())


@dataclass
class TrustKit:
    """Root + bundle key; makes signed bundle files listing the given keys."""

    root: SoftwareSigner = field(default_factory=new_signer)
    bundle_key: SoftwareSigner = field(default_factory=new_signer)
    receipt: SoftwareSigner = field(default_factory=new_signer)  #: a server receipt key for counters pinned offline

    def __post_init__(self) -> None:
        now = int(time.time())
        k = cose_key(self.bundle_key)
        entry = KeyEntry(k.kid, Role.BUNDLE, k.alg, self.bundle_key.public_key, KeyStatus.ACTIVE, None,
                         now - 86400, now + 10 * 365 * 86400, Backend.FILE, "bundle.p8")
        self.endorsement = endorse(self.root, entry, valid_from=now - 86400, valid_until=now + 60 * 86400)

    def root_pem(self) -> bytes:
        return self.root.public_key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)

    def bundle(self, version: int, issuers: tuple[SoftwareSigner, ...] = (),
               terminals: tuple[SoftwareSigner, ...] = (), programmes: tuple[Programme, ...] = PROGRAMMES,
               deny_cards: tuple[bytes, ...] = (), policies: dict[str, int] | None = None,
               issued_at: int | None = None) -> tuple[TrustBundle, bytes]:
        keys = [BundleKey(cose_key(s).kid, KeyRole.ISSUER, cose_key(s).alg, s.public_key) for s in issuers]
        keys += [BundleKey(cose_key(s).kid, KeyRole.TERMINAL, cose_key(s).alg, s.public_key) for s in terminals]
        at = int(time.time()) - 60 if issued_at is None else issued_at
        b = TrustBundle(version=version, issued_at=at, expires_at=at + 30 * 86400, keys=tuple(keys),
                        deny_cards=SortedIdSet.from_ids(deny_cards, 8), programmes=programmes,
                        policies=policies or {})
        return b, sign_bundle(b, self.bundle_key, self.endorsement)


def enrol_terminal(world: Any, terminal_id: str, signer: SoftwareSigner) -> None:
    """Send a CSR for ``signer``'s key and approve it as admin (the real enrolment API)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
           .sign(signer.private_key, None))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    r = world.client.post("/api/v1/terminals/enrol", json={"terminal_id": terminal_id, "csr": pem,
                                                           "code": world.enrolment_code(terminal_id)})
    assert r.status_code == 202, r.get_json()
    world.approve(terminal_id)


def publish_bundle(world: Any, version: int, data: bytes) -> None:
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)).isoformat()
    r = world.client.post("/api/v1/bundles", headers=world.auth(), json={
        "version": version, "expires_at": expires, "blob": base64.b64encode(data).decode()})
    assert r.status_code == 201, r.get_json()


# ----------------------------------------------------------------------------- network faults


class FaultProxy:
    """HTTP/1.1 relay on 127.0.0.1 to an upstream server, one request per connection.

    ``plan`` is consumed one action per request: ``"pass"`` relays; ``"drop"``
    relays to the server, reads its full answer and closes the client socket
    without a byte (a connection lost mid-request, after the server committed);
    ``"busy"`` answers 503 with ``Retry-After: <retry_after>`` without asking
    the server. When the plan is empty every request passes.
    """

    def __init__(self, upstream_host: str, upstream_port: int, retry_after: int = 1) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.retry_after = retry_after
        self.plan: deque[str] = deque()
        self.log: list[tuple[str, str, str, int]] = []  #: (method, path, action, status seen by client)
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.rfile, self.connection)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, rfile: Any, conn: socket.socket) -> None:
        line = rfile.readline().decode("latin-1").strip()
        if not line:
            return
        method, path, _ = line.split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = rfile.readline().decode("latin-1")
            if h in ("\r\n", "\n", ""):
                break
            k, v = h.split(":", 1)
            headers[k.strip()] = v.strip()
        body = rfile.read(int(headers.get("Content-Length", "0") or 0))
        action = self.plan.popleft() if self.plan else "pass"
        if action == "busy":
            payload = b'{"error": {"code": "database_busy", "message": "busy"}}'
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         + f"Retry-After: {self.retry_after}\r\nContent-Length: {len(payload)}\r\n"
                           "Connection: close\r\n\r\n".encode() + payload)
            self.log.append((method, path, action, 503))
            return
        up = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers.pop("Host", None)
            up.request(method, path, body=body or None, headers=headers)
            resp = up.getresponse()
            data = resp.read()
        finally:
            up.close()
        if action == "drop":
            self.log.append((method, path, action, 0))
            conn.shutdown(socket.SHUT_RDWR)
            return
        out = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode()]
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                out.append(f"{k}: {v}\r\n".encode())
        out.append(f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode())
        conn.sendall(b"".join(out) + data)
        self.log.append((method, path, action, resp.status))


# ----------------------------------------------------------------------------- a daemon's files

ACR122U_LEDS = '''
[feedback]
channel = "apdu"
success = ["FF 00 40 AE 04 01 01 01 01"]
decline = ["FF 00 40 5D 04 02 02 03 01"]
busy = ["FF 00 40 FC 04 01 01 02 00"]
'''


def reader_toml(name: str, pass_through: str = "acr122u", feedback: str = ACR122U_LEDS,
                extra: str = "") -> str:
    """A reader profile for the vpcd virtual reader (``Virtual PCD 00 0<slot>``)."""
    return f'''kind = "reader"
schema_version = 1
name = "{name}"
description = "vpcd virtual reader for tests"
stack = "pcsc"
name_pattern = '^Virtual PCD'
pass_through = "{pass_through}"
max_frame = {252 if pass_through == "acr122u" else 124}
poll_interval = 0.2
{extra}
{feedback}
'''


@dataclass
class CounterFiles:
    """A counter's directory: ``terminals/terminal.toml``, ``readers/*.toml``, ``state/``."""

    root: Any
    profile: Any
    state: Any
    signer: SoftwareSigner
    screen_port: int
    passphrase: bytes = b"counter passphrase 2026"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_counter(root: Any, kit: TrustKit, *, readers: dict[str, str], bindings: list[tuple[str, str | None]],
                 bundle_extra: dict[str, Any] | None = None, terminal_id: str = "T-6271-0009",
                 programmes: tuple[str, ...] = ("food",), mode: str = "market_redemption",
                 server_url: str | None = None, install_bundle: bool = True) -> CounterFiles:
    """Write a complete counter: key made by ``huma terminal init``, pinned root, installed bundle, profile.

    :param install_bundle: False leaves the counter fresh (no bundle yet, as before enrolment).

    :param readers: reader profile name -> TOML text.
    :param bindings: ``(reader profile, slot_pattern or None)`` per ``[[readers]]`` entry.
    """
    from pathlib import Path

    from click.testing import CliRunner

    from cardlib.keys.pkcs8 import load_signer
    from huma.cli import cli
    from terminal.sync import TrustStore

    root = Path(root)
    (root / "terminals").mkdir(parents=True)
    (root / "readers").mkdir()
    state = root / "state"
    state.mkdir()
    for name, text in readers.items():
        (root / "readers" / f"{name}.toml").write_text(text)
    files = CounterFiles(root, root / "terminals" / "terminal.toml", state, None, free_port())  # type: ignore[arg-type]
    (root / "secrets").mkdir(mode=0o700)  # an explicit passphrase file: private, not beside the key
    (root / "secrets" / "passphrase").write_bytes(files.passphrase + b"\n")
    (root / "secrets" / "passphrase").chmod(0o600)
    (state / "root.pem").write_bytes(kit.root_pem())
    url = server_url or f"http://127.0.0.1:{free_port()}"  # nothing listens: an offline counter
    lines = [
        'kind = "terminal"', "schema_version = 1", f'terminal_id = "{terminal_id}"', 'region = "62.71"',
        f'counter_mode = "{mode}"', "programmes = [" + ", ".join(f'"{p}"' for p in programmes) + "]",
        'language = "id"', f'server_url = "{url}"', "sync_interval = 10", f"screen_port = {files.screen_port}",
        "", "[paths]", 'key = "../state/terminal-key.p8"', 'journal = "../state/journal.sqlite"',
        'passphrase = "../secrets/passphrase"', 'root_key = "../state/root.pem"', 'bundle = "../state/bundle.cose"',
    ]
    for name, slot in bindings:
        lines += ["", "[[readers]]", f'profile = "{name}"'] + ([f"slot_pattern = '{slot}'"] if slot else [])
    files.profile.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["terminal", "init", "--profile", str(files.profile)])
    assert result.exit_code == 0, result.output
    files.signer = load_signer(state / "terminal-key.p8", files.passphrase)
    (state / "terminal-key.receipt-key.pem").write_bytes(kit.receipt.public_key.public_bytes(  # enrol overwrites it
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    kw = dict(bundle_extra or {})
    kw["terminals"] = tuple(kw.get("terminals", ())) + (files.signer,)
    _b, data = kit.bundle(1, **kw)
    if install_bundle:
        TrustStore(state / "bundle.cose", kit.root.public_key).install(data, None)
    return files
