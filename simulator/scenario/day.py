"""One counter day, end to end, on virtual cards behind the real stacks.

Order (each step prints one short paragraph through :class:`Story`):

1. keys: ``huma keys init`` + issuer, terminal CA, bundle and technician keys;
2. server: ``huma server db upgrade``, ``huma server people add`` (admin, auditor; the technician
   tech-01 is added at the issuance upload, step 5),
   ``huma server run`` (waitress, SQLite) as a subprocess;
3. enrolment: ``huma terminal init`` + ``huma terminal enrol`` for the clinic,
   market and balance-kiosk counters, ``huma keys csr`` for the provisioning
   station, each CSR approved by the admin through the API;
4. trust bundle v1 (keystore keys + the certified terminal keys + programmes)
   published through the API;
5. provisioning: ``huma provision batch`` over a generated household CSV, one
   blank virtual NTAG215 after the other on reader slot 0;
6. a household reports its card lost: ``huma server cards block`` at the office, then
   ``huma server bundle publish`` signs bundle v2 with that card and its chip UID denied;
7. the counters (``huma terminal run``) serve a queue of taps: redemptions,
   balance checks, declines, a card pulled mid-write and re-presented;
8. the server goes down; taps continue offline, including a cloned card
   (``huma sim export``/``import`` of a household's card: same UID) used at
   both counters; the server comes back and the counters sync;
9. ``huma audit reconcile``, ``huma audit export``, ``huma journal verify``.

Nothing beneficiary-identifying is printed: households are shown by their
pseudonymous reference only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from rich.markup import escape

from simulator.scenario.world import (
    VIRTUAL_ACR122U,
    Api,
    Cli,
    Counter,
    Process,
    Readers,
    ScenarioError,
    free_port,
    new_secret,
    secret,
    tap,
    wait_http,
)

#: Programmes of the demo province: (card programme id, bundle name, unit, per cycle).
PROGRAMMES = ((1, "food", "package", 1), (3, "health", "visit", 4))
PROVISION_PROFILE = """valid_days = 730
[programmes.1]
unit = "package"
per_cycle = 1
offline_cap = 1
[programmes.3]
unit = "visit"
per_cycle = 4
offline_cap = 4
"""
#: Seconds between sync rounds (the profile minimum; retries after failures use backoff).
SYNC_INTERVAL_S = 10
#: Bytes programmed before the "pulled" card leaves the field mid-write (a slot is ~144 bytes).
TEAR_AFTER_BYTES = 40


@dataclass
class ScenarioOptions:
    """:ivar households: cards to provision (≥ 6: the story needs six distinct roles).
    :ivar workdir: keep everything here (default: a temporary directory removed at the end).
    :ivar keep_running: leave server and counters up until Ctrl-C.
    :ivar seed: seeds the household references and chip UIDs."""

    households: int = 6
    workdir: Path | None = None
    keep_running: bool = False
    seed: int = 2026


@dataclass
class DayResult:
    """What the run produced, for the story's end and for tests."""

    workdir: Path
    taps: list[dict[str, Any]] = field(default_factory=list)  #: every screen result, with "counter" and "card"
    committed: dict[str, int] = field(default_factory=dict)  #: card id → COMMIT+FINISHED entries at the server
    findings: list[dict[str, Any]] = field(default_factory=list)
    reconcile: dict[str, Any] = field(default_factory=dict)
    journals_verified: list[str] = field(default_factory=list)
    card_ids: dict[str, str] = field(default_factory=dict)  #: card file name → card id (hex)
    household_refs: list[str] = field(default_factory=list)  #: the provisioned households (16 hex)
    clone_card_id: str = ""
    denied_card_id: str = ""
    torn_card_id: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    #: pcscd name ("main", "kiosk") → the ``PCSCLITE_CSOCK_NAME=…`` setting that reaches its virtual readers
    reader_env: dict[str, str] = field(default_factory=dict)


class Story:
    """Prints the run as short paragraphs with rich (stdout)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.t0 = time.monotonic()
        self.n = 0

    def step(self, title: str) -> None:
        self.n += 1
        self.console.print(f"\n[bold cyan]{self.n}. {title}[/]  [dim]({time.monotonic() - self.t0:.1f} s)[/]")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        self.console.print("   " + text)

    def tap(self, counter: str, who: str, r: dict[str, Any]) -> None:
        colour = {"accepted": "green", "recovered": "green", "balance": "blue", "declined": "red",
                  "uncertain": "yellow", "voided": "yellow", "retry": "yellow"}.get(r["status"], "white")
        detail = r["hand_over"] or r["remaining"]
        extra = f" — {r['reason']}" if r["reason"] and r["status"] != "accepted" else ""
        self.console.print(f"   [bold]{counter:<7}[/] {who:<22} [{colour}]{r['headline']:<10}[/] "
                           f"{detail}{extra}")


class Day:
    """The scenario's state and steps; :func:`run_day` drives it."""

    def __init__(self, opts: ScenarioOptions, story: Story) -> None:
        if opts.households < 6:
            raise ScenarioError("the story needs at least 6 households")
        self.opts = opts
        self.story = story
        self.rng = random.Random(opts.seed)
        self.own_dir = opts.workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="huma-demo-")) if opts.workdir is None else opts.workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result = DayResult(self.dir)
        self.secrets = self.dir / "secrets"
        self.keys = self.dir / "keys"
        self.card_keys = self.secrets / "card-keys.json"
        self.cards = self.dir / "cards"
        self.logs = self.dir / "logs"
        for d in (self.secrets, self.cards, self.logs):
            d.mkdir(exist_ok=True)
        self.server_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.server_port}"
        self.db_url = f"sqlite:///{self.dir / 'server' / 'huma.db'}"
        (self.dir / "server").mkdir(exist_ok=True)
        self.harness: Any = None
        self.kiosk_harness: Any = None
        self.readers: Readers | None = None
        self.server: Process | None = None
        self.counters: dict[str, Counter] = {}
        self.cli = Cli(self.logs / "cli.log", {"DATABASE_URL": self.db_url})
        self.api = Api(self.server_url)
        self.bundle_version = 0
        self.terminal_certs: list[Path] = []
        self.fab: Any = None

    # ------------------------------------------------------------------ infrastructure

    def start_pcscd(self) -> None:
        from simulator.harness import PcscdHarness

        self.harness = PcscdHarness(slots=2, workdir=self.dir / "pcscd")
        self.harness.start()
        self.harness.export_env()  # before the first PC/SC context of this process
        self.kiosk_harness = PcscdHarness(slots=2, workdir=self.dir / "pcscd-kiosk")
        self.kiosk_harness.start()
        self.readers = Readers({"main": self.harness, "kiosk": self.kiosk_harness})

    def env(self, pcscd: str = "main") -> dict[str, str]:
        import os

        env = dict(os.environ)
        env.update((self.kiosk_harness if pcscd == "kiosk" else self.harness).client_env())
        env["DATABASE_URL"] = self.db_url
        env.pop("HUMA_KEY_PASSPHRASE", None)
        return env

    def start_server(self) -> None:
        env = self.env()
        ca = next((self.keys / "keys").glob("terminal-ca-*.p8.pem"))
        env["HUMA_TERMINAL_CA_KEY"] = str(ca)
        env["HUMA_TERMINAL_CA_KEY_PASSWORD"] = secret(self.secrets / "keys.pass")
        # Published bundles and card issuances are verified under the keystore's root certificate.
        env["HUMA_TRUST_ROOT_CERT"] = str(self.root_cert)
        env["HUMA_RECEIPT_KEY"] = str(self.dir / "server" / "receipt-key.pem")  # signs receipts; counters pin it
        self.server = Process("server", ["server", "run", "--port", str(self.server_port), "--threads", "4"],
                              env, self.logs / "server.log").start()
        wait_http(self.server_url + "/api/v1/bundle", proc=self.server.proc)

    def stop(self) -> None:
        for c in self.counters.values():
            if c.process is not None:
                c.process.stop()
        if self.server is not None:
            self.server.stop()
        for h in (self.harness, self.kiosk_harness):
            if h is not None:
                h.stop()

    # ------------------------------------------------------------------ 1. keys

    def make_keys(self) -> None:
        self.story.step("Key ceremony")
        root_pw = new_secret(self.secrets / "root.pass")
        key_pw = new_secret(self.secrets / "keys.pass")
        self.cli("keys", "init", "--dir", str(self.keys), "--root-passphrase-file", str(root_pw))
        for role in ("issuer", "terminal-ca", "bundle"):
            self.cli("keys", "issue", role, "--dir", str(self.keys), "--root-passphrase-file", str(root_pw),
                     "--passphrase-file", str(key_pw))
        self.cli("keys", "issue", "technician", "--name", "tech-01", "--dir", str(self.keys),
                 "--root-passphrase-file", str(root_pw), "--passphrase-file", str(key_pw))
        # The provincial card-password key file: cards are issued in format 2 (docs/card-format.md §2.2).
        self.cli("keys", "card-passwords", "create", str(self.card_keys), "--passphrase-file", str(key_pw))
        from cardlib.keys.keystore import KeyStore

        store = KeyStore.open(self.keys)
        self.root_cert = self.keys / "certs" / f"{store.root_kid.hex()}.crt.pem"
        self.root_pem = store.entry(store.root_kid).public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.story.say(f"root {store.root_kid.hex()} → issuer, terminal CA, bundle and technician keys "
                       f"(`huma keys`, encrypted PKCS#8 in {self.keys}); the provincial card-password key file "
                       "(`huma keys card-passwords create`) for counters and the station.")
        self.story.say(f"[yellow]Demo only:[/] passphrases were generated and kept in {self.secrets}; "
                       "in production the root key goes offline (docs/operations.md).")

    # ------------------------------------------------------------------ 2. server

    def start_central(self) -> None:
        self.story.step("Central server")
        self.cli("server", "db", "upgrade")
        for user, role in (("admin", "admin"), ("auditor", "auditor")):
            pw = new_secret(self.secrets / f"{user}.pass")
            self.cli("server", "people", "add", user, "--role", role, "--password-file", str(pw))
        self.start_server()
        self.api.login("admin", secret(self.secrets / "admin.pass"))
        self.story.say(f"`huma server run` (waitress, SQLite {self.dir / 'server' / 'huma.db'}) on {self.server_url}; "
                       "people: admin, auditor (the technician tech-01 is added where the cards are registered).")

    # ------------------------------------------------------------------ 3. enrolment

    def _approve(self, tid: str) -> None:
        """Approve ``tid`` by its key fingerprint (read from the server here; a real admin reads the counter)."""
        listed = self.api.call("GET", "/api/v1/terminals")["terminals"]
        (fingerprint,) = [t["fingerprint"] for t in listed if t["terminal_id"] == tid]
        self.api.call("POST", f"/api/v1/terminals/{tid}/approve", {"fingerprint": fingerprint})

    def enrol(self) -> None:
        self.story.step("Enrolment: counters and the provisioning station")
        plan = [("clinic", "T-6271-0101", "clinic_visit", ("health",), 0),
                ("market", "T-6271-0202", "market_redemption", ("food",), 1),
                ("kiosk", "T-6271-0303", "balance_check", ("food", "health"), 0)]
        for name, tid, mode, progs, slot in plan:
            c = Counter(name, tid, mode, progs, slot, self.dir / "counters" / name,
                        pcscd="kiosk" if name == "kiosk" else "main")
            c.write_profile(self.server_url, VIRTUAL_ACR122U, SYNC_INTERVAL_S)
            (c.state.parent / "secrets").mkdir(mode=0o700, exist_ok=True)  # not beside the key (docs/security.md)
            shutil.copy(self.secrets / "keys.pass", c.state.parent / "secrets" / "passphrase")
            (c.state.parent / "secrets" / "passphrase").chmod(0o600)
            shutil.copy(self.card_keys, c.state / "card-keys.json")
            (c.state / "root.pem").write_bytes(self.root_pem)
            self.cli("terminal", "init", "--profile", str(c.profile))
            code = self.api.call("POST", f"/api/v1/terminals/{tid}/enrolment-code")["code"]
            self.cli("terminal", "enrol", "--profile", str(c.profile), "--code", code, ok=(3,))  # pending approval
            self._approve(tid)
            self.cli("terminal", "enrol", "--profile", str(c.profile))
            self.terminal_certs.append(c.cert)
            self.counters[name] = c
        station = self.dir / "station"
        station.mkdir(exist_ok=True)
        self.cli("keys", "csr", "--terminal-id", "S-6271-0001", "--key-out", str(station / "station.p8"),
                 "--csr-out", str(station / "station.csr.pem"), "--passphrase-file", str(self.secrets / "keys.pass"))
        code = self.api.call("POST", "/api/v1/terminals/S-6271-0001/enrolment-code")["code"]
        self.api.call("POST", "/api/v1/terminals/enrol",
                      {"terminal_id": "S-6271-0001", "csr": (station / "station.csr.pem").read_text(), "code": code})
        self._approve("S-6271-0001")
        cert = self.api.call("GET", "/api/v1/terminals/S-6271-0001/certificate")
        pem = cert["certificate"] if isinstance(cert, dict) else cert.decode()
        (station / "station.cert.pem").write_text(pem)
        self.terminal_certs.append(station / "station.cert.pem")
        self.story.say("clinic T-6271-0101, market T-6271-0202, balance kiosk T-6271-0303: "
                       "`huma terminal init` (own key + CSR) → `huma terminal enrol` → admin approves → certificate.")
        self.story.say("provisioning station S-6271-0001: `huma keys csr`, approved the same way.")

    # ------------------------------------------------------------------ 4/6. bundles

    def publish_bundle(self) -> None:
        """Bundle v1, before the server knows any card: the keystore's keys, the certified terminals, programmes."""
        from cryptography import x509

        from cardlib.keys.keystore import KeyStore, Role
        from cardlib.records.bundle import (
            CARD_ID_LENGTH,
            Programme,
            SortedIdSet,
            TrustBundle,
            keystore_bundle_keys,
            sign_bundle,
            terminal_bundle_key,
        )

        store = KeyStore.open(self.keys)
        terminals = []
        for p in self.terminal_certs:
            cert = x509.load_pem_x509_certificate(p.read_bytes())
            terminals.append(terminal_bundle_key(cert.public_key(),  # type: ignore[arg-type]
                                                 int(cert.not_valid_after_utc.timestamp())))
        self.bundle_version += 1
        now = int(time.time())
        bundle = TrustBundle(
            version=self.bundle_version, issued_at=now, expires_at=now + 14 * 86400,
            keys=keystore_bundle_keys(store.entries) + tuple(terminals),
            deny_cards=SortedIdSet.from_ids([], CARD_ID_LENGTH),
            programmes=tuple(Programme(i, n, u, q) for i, n, u, q in PROGRAMMES))
        key = store.active(Role.BUNDLE)
        signer = store.signer(key.kid, secret(self.secrets / "keys.pass").encode())
        blob = sign_bundle(bundle, signer, store.endorsement(key.kid))
        self.bundle_path = self.dir / f"bundle-v{self.bundle_version}.cose"
        self.bundle_path.write_bytes(blob)
        self.api.publish_bundle(self.bundle_version, bundle.expires_at, blob)

    def block_lost_card(self, card_id: str) -> None:
        """Block a card reported lost as the office does (docs/operations.md §Cards reported lost), then publish.

        The server's own use case (:func:`server.card_blocks.block_card` behind ``huma server cards block``)
        and its bundle publication (:func:`server.bundles.publish_next_bundle`): the deny lists come from the
        block, keys, programmes and policies from the previous bundle and the approved terminals.
        """
        import re

        out = self.cli("server", "cards", "block", card_id, "--reason", "lost", "--by", "tech-01",
                       "--note", "reported at the office by the household").out
        if f"card {card_id} blocked" not in out:
            raise ScenarioError(f"`huma server cards block` did not block {card_id}:\n{out}")
        out = self.cli("server", "bundle", "publish", "--keystore", str(self.keys),
                       "--passphrase-file", str(self.secrets / "keys.pass")).out
        published = re.search(r"published bundle v(\d+)", out)
        if published is None or int(published.group(1)) != self.bundle_version + 1:
            raise ScenarioError(f"`huma server bundle publish` did not publish v{self.bundle_version + 1}:\n{out}")
        self.bundle_version = int(published.group(1))

    # ------------------------------------------------------------------ 5. provisioning

    def provision(self) -> None:
        import ecdsa
        from ecdsa.util import sigencode_string

        from simulator.chip import ChipVariant, Ntag21x

        assert self.readers is not None
        n = self.opts.households
        self.story.step(f"Provisioning {n} cards")
        self.publish_bundle()
        self.story.say(f"trust bundle v1 published: issuer + technician keys, {len(self.terminal_certs)} "
                       "certified terminal keys, programmes food (1 package) and health (4 visits) per half-year.")
        households = self.dir / "households.csv"
        refs = [f"{self.rng.getrandbits(64):016x}" for _ in range(n)]
        with households.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["household_ref", "region", "programmes"])
            for ref in refs:
                w.writerow([ref, "62.71", "1;3"])
        (self.dir / "provision.toml").write_text(PROVISION_PROFILE)
        # Blank chips signed by a demo "fab" key: NXP's originality key cannot sign here.
        fab = ecdsa.SigningKey.generate(curve=ecdsa.SECP128r1, entropy=_entropy(self.rng))
        station = self.dir / "station"
        from cardlib.keys.pkcs8 import load_signer

        station_kid = load_signer(station / "station.p8", secret(self.secrets / "keys.pass").encode()).kid
        argv = ["provision", "batch", str(households), "--keys", str(self.keys), "--technician", "tech-01",
                "--station-key", str(station / "station.p8"), "--station-id", str(int.from_bytes(station_kid, "big")),
                "--bundle", str(self.bundle_path), "--profile", str(self.dir / "provision.toml"),
                "--card-keys", str(self.card_keys), "--card-keys-passphrase-file", str(self.secrets / "keys.pass"),
                "--passphrase-file", str(self.secrets / "keys.pass"), "--reader", "*PCD 00 00", "--timeout", "30",
                "--originality-key", fab.get_verifying_key().to_string("uncompressed").hex(),
                "--qr-dir", str(self.dir / "households.provision" / "qr")]
        batch = Process("provision", argv, self.env(), self.logs / "provision.log").start()
        results = self.dir / "households.provision" / "results.csv"
        for i in range(n):
            uid = bytes((0x04,)) + self.rng.randbytes(6)
            chip = Ntag21x.blank(ChipVariant.NTAG215, uid)
            chip.signature = fab.sign_digest(uid, sigencode=sigencode_string, allow_truncate=True)
            path = chip.save(self.cards / f"card-{i + 1}.json")
            with self.readers.present(path, 0):
                deadline = time.monotonic() + 30
                while not (results.exists() and len(results.read_text().splitlines()) > i + 1):
                    if batch.proc is not None and batch.proc.poll() is not None and i < n - 1:
                        raise ScenarioError(f"provisioning stopped early (see {batch.log})")
                    if time.monotonic() > deadline:
                        raise ScenarioError(f"card {i + 1} not provisioned after 30 s (see {batch.log})")
                    time.sleep(0.05)
        assert batch.proc is not None
        if batch.proc.wait(30) != 0:
            raise ScenarioError(f"`huma provision batch` exited {batch.proc.returncode} (see {batch.log})")
        with results.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for i, row in enumerate(rows):
            if row["status"] != "issued":
                raise ScenarioError(f"household on line {row['line']} not issued: {row}")
            self.result.card_ids[f"card-{i + 1}.json"] = row["card_id"]
        self.refs = {f"card-{i + 1}.json": ref for i, ref in enumerate(refs)}
        self.story.say(f"`huma provision batch`: {n} blank NTAG215 chips on reader slot 0 (real pcscd + vpcd) → "
                       f"{len(rows)} cards issued, locked and read back; signed issuance file "
                       f"{results.parent / 'issuances.cose'}; household QR codes for the card bodies in "
                       f"{results.parent / 'qr'}.")
        self.upload_issuance(results.parent / "issuances.cose")

    def upload_issuance(self, issuances: Path) -> None:
        """Register the station's signed issuance file as the technician does (`huma server cards upload-issuance`).

        Without it the server knows no card: no household view, statement, receipt
        household or dashboard count (households expected).
        """
        pw = new_secret(self.secrets / "tech-01.pass")
        self.cli("server", "people", "add", "tech-01", "--role", "technician", "--password-file", str(pw))
        self.cli.env["HUMA_TRUST_ROOT_CERT"] = str(self.root_cert)
        out = self.cli("server", "cards", "upload-issuance", str(issuances), "--technician", "tech-01").out
        accepted = sum(1 for line in out.splitlines() if line.endswith(" accepted"))
        if accepted != len(self.result.card_ids):
            raise ScenarioError(f"issuance upload registered {accepted} of {len(self.result.card_ids)} cards:\n{out}")
        self.result.household_refs = sorted(self.refs.values())
        self.story.say(f"`huma server people add tech-01 --role technician`, then `huma server cards upload-issuance` "
                       f"(technician tech-01): {accepted} cards registered, "
                       "so the server knows each card's household (household view, receipts, dashboard).")

    # ------------------------------------------------------------------ 7/8. the counter day

    def who(self, card: str) -> str:
        if card == "clone.json":
            return "the clone"
        return f"household {self.refs[card][:8]}…" if card in self.refs else card

    def do_tap(self, counter: str, card: str, **kw: Any) -> dict[str, Any]:
        assert self.readers is not None
        r = tap(self.readers, self.counters[counter], self.cards / card, **kw)
        r = dict(r, counter=counter, card=card)
        self.result.taps.append(r)
        self.story.tap(counter, self.who(card), r)
        return r

    def start_counters(self) -> None:
        for c in self.counters.values():
            c.process = Process(c.name, ["terminal", "run", "--profile", str(c.profile)], self.env(c.pcscd),
                                self.logs / f"counter-{c.name}.log").start()
        for c in self.counters.values():
            assert c.process is not None
            wait_http(c.screen_url + "api/state", proc=c.process.proc)
            deadline = time.monotonic() + 30
            while True:  # the counter keeps its readers off until it holds a bundle
                health = c.screen_state()["health"]
                if health.get("bundle_version") == self.bundle_version and "waiting" in health["readers"].values():
                    break
                if time.monotonic() > deadline:
                    raise ScenarioError(f"{c.name}: no bundle v{self.bundle_version} / reader after 30 s: {health}")
                time.sleep(0.1)

    def counter_day(self) -> None:
        from simulator.chip import FaultPlan

        cards = [f"card-{i + 1}.json" for i in range(self.opts.households)]
        lost, torn, cloned = cards[5], cards[3], cards[4]
        self.result.denied_card_id = self.result.card_ids[lost]
        self.result.torn_card_id = self.result.card_ids[torn]
        self.result.clone_card_id = self.result.card_ids[cloned]

        self.story.step("Morning: counters open")
        self.block_lost_card(self.result.card_ids[lost])
        self.story.say(f"{self.who(lost)} reported its card lost at the office → `huma server cards block` "
                       "(technician tech-01) → `huma server bundle publish`: trust bundle "
                       f"v{self.bundle_version} denies that card and its chip UID.")
        self.start_counters()
        self.story.say("`huma terminal run` × 3 (clinic and market on two readers of one pcscd, "
                       "balance kiosk on a second pcscd); the kiosk on its own machine's reader; "
                       "each fetched bundle v2 from the server.")

        self.story.step("Queue of taps (online)")
        self.do_tap("market", cards[0])
        self.do_tap("market", cards[1])
        self.do_tap("market", cards[0])  # nothing left this cycle
        self.do_tap("kiosk", cards[0])
        self.do_tap("clinic", cards[2])
        self.do_tap("clinic", cards[0])
        self.do_tap("market", lost)
        for extra in cards[6:]:
            self.do_tap("market", extra)

        self.story.step("A card pulled away mid-write")
        r = self.do_tap("market", torn, faults=FaultPlan(remove_after_write_bytes=TEAR_AFTER_BYTES))
        if r["status"] != "uncertain":
            raise ScenarioError(f"the torn write was reported {r['status']!r}, expected 'uncertain'")
        r = self.do_tap("market", torn)
        if r["status"] == "voided":
            self.story.say("the torn write was voided (nothing charged); the clerk serves the card again:")
            self.do_tap("market", torn)
        self.story.say("the counter journalled PENDING before writing and UNCERTAIN after the tear; the card's "
                       "return resolved it — one package, charged once.")

        self.story.step("Offline stretch: the server is down")
        assert self.server is not None
        self.server.stop()
        self.story.say("server stopped; the counters keep serving from their journals.")
        self._clone(cloned)
        self.do_tap("market", cloned)
        self.do_tap("clinic", "clone.json")
        self.do_tap("clinic", cards[1])
        self.do_tap("kiosk", cards[2])
        unsent = {n: c.screen_state()["health"]["unsent"] for n, c in self.counters.items()}
        self.story.say("journal entries waiting for upload: " + ", ".join(f"{n} {u}" for n, u in unsent.items()))

        self.story.step("Back online: sync")
        self.start_server()
        t = time.monotonic()
        self.wait_synced()
        self.story.say(f"server back on {self.server_url}; every counter uploaded its journal "
                       f"({time.monotonic() - t:.1f} s after restart, retries with backoff).")

    def _clone(self, card: str) -> Path:
        """Dump a household's card like a Flipper Zero would and write it onto a 'magic' chip (same UID).

        The reader gets only the pages that answer without the card password (a format-2 card:
        the public pages 0-10, docs/card-format.md §2.2); the dump says so (``Pages read``) and
        the import fills the rest with the chip's factory values (`huma sim import --fill-missing`).
        """
        import re

        from simulator.chip import Ntag21x

        dump = self.cards / "clone.nfc"
        self.cli("sim", "export", str(self.cards / card), str(dump), "--format", "flipper")
        chip = Ntag21x.load(self.cards / card)
        auth0 = chip.page(chip.layout.cfg0_page)[3]
        readable = auth0 if chip.page(chip.layout.cfg1_page)[0] & 0x80 else chip.layout.total_pages
        text = re.sub(r"^Pages read: \d+$", f"Pages read: {readable}", dump.read_text(), flags=re.M)
        text = "".join(line for line in text.splitlines(keepends=True)
                       if not ((m := re.match(r"Page (\d+):", line)) and int(m.group(1)) >= readable))
        dump.write_text(text)
        self.cli("sim", "import", str(dump), str(self.cards / "clone.json"), "--fill-missing")
        self.story.say(f"someone dumped {self.who(card)}'s card (`huma sim export --format flipper`: {readable} pages "
                       "answered without the card password) and wrote it onto a second chip with the same UID "
                       "(`huma sim import`): the clone.")
        return self.cards / "clone.json"

    def wait_synced(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending: dict[str, Any] = {}
        for c in self.counters.values():
            c.sync_now()  # the clerk's "sync now" button: no wait for the next sync_interval
        while time.monotonic() < deadline:
            pending = {n: c.screen_state()["health"] for n, c in self.counters.items()}
            pending = {n: h for n, h in pending.items() if h["unsent"] or (h["sync_error"] and h["unsent"])}
            if not pending:
                return
            time.sleep(0.2)
        raise ScenarioError(f"counters did not sync within {timeout:.0f} s: {pending}")

    # ------------------------------------------------------------------ 9. audit

    def audit(self) -> None:
        self.story.step("Reconciliation and audit")
        out = self.cli("audit", "reconcile", "--verify-signatures", "--json").out
        self.result.reconcile = json.loads(out[out.index("{"):])
        findings = self.dir / "findings.json"
        journal = self.dir / "journal-export.json"
        self.cli("audit", "export", "findings", "--format", "json", "--out", str(findings))
        # The export's header is signed with the server's receipt key (the one counters pinned).
        self.cli.env["HUMA_RECEIPT_KEY"] = str(self.dir / "server" / "receipt-key.pem")
        self.cli("audit", "export", "journal", "--format", "json", "--out", str(journal))
        self.result.findings = json.loads(findings.read_text())["items"]
        committed: Tally[str] = Tally()
        entries = json.loads(journal.read_text())["items"]
        for e in entries:
            if e["kind"] in ("COMMIT", "FINISHED"):
                committed[e["card_id"]] += 1
        self.result.committed = dict(committed)
        kinds = Tally(e["kind"] for e in entries)
        self.story.say(f"server holds {len(entries)} signed journal entries from {len(self.counters)} counters: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        by_kind = Tally(f["kind"] for f in self.result.findings)
        self.story.say("`huma audit reconcile --verify-signatures`: " + (", ".join(
            f"{k} {v}" for k, v in sorted(by_kind.items())) or "no findings"))
        for f in self.result.findings:
            tag = " [bold red](the clone)[/]" if f.get("card_id") == self.result.clone_card_id else ""
            self.story.say(f"  • {escape('[' + f['severity'] + ']')} {f['kind']}: {escape(f['summary'])}{tag}")
        for c in self.counters.values():
            self.cli("journal", "verify", str(c.journal), "--cert", str(c.cert))
            self.result.journals_verified.append(c.name)
        self.story.say("`huma journal verify` (signatures, hash chain, no gaps): "
                       + ", ".join(f"{n} OK" for n in self.result.journals_verified))

    def where(self) -> None:
        self.result.urls = {"auditor": f"{self.server_url}/audit/",
                            **{f"counter {n}": c.screen_url for n, c in self.counters.items()}}
        live = self.opts.keep_running
        self.story.step("Where to look" if live else "Where it ran")
        if not live:
            self.story.say("[dim]these pages were live during the run; the demo stops them when it ends "
                           "(`--keep-running` leaves them up until Ctrl-C)[/]")
        for name, url in self.result.urls.items():
            self.story.say(f"{name:<15} {url}")
        self.result.reader_env = {
            name: " ".join(f"{k}={v}" for k, v in h.client_env().items())
            for name, h in (("main", self.harness), ("kiosk", self.kiosk_harness))
        }
        if live:
            # The card readers are virtual, behind private pcscd instances: the system socket reaches none.
            for name, setting in self.result.reader_env.items():
                self.story.say(f"card readers ({name} pcscd): {setting} huma readers   "
                               f"(and `{setting} huma card info`)")
            # The virtual readers are vpcd slots: a clerk "taps" a card file by presenting it on a slot's port.
            card = escape(str(self.cards / "card-1.json"))
            for name, h in (("main", self.harness), ("kiosk", self.kiosk_harness)):
                owner = {c.slot: c.name for c in self.counters.values() if c.pcscd == name}
                slots = ", ".join(f"{h.reader_name(i)} = vpcd port {port} ({owner.get(i, 'no counter')})"
                                  for i, port in enumerate(h.ports))
                self.story.say(f"virtual readers ({name} pcscd): {slots}")
                self.story.say(f"  tap a card at the {owner.get(0, 'slot 0')} counter: "
                               f"huma sim present {card} --port {h.port(0)} --for 5")
        if live or not self.own_dir:
            self.story.say(f"auditor login: auditor / password in {self.secrets / 'auditor.pass'}")
            kept = ("" if not self.own_dir
                    else " (a temporary directory, removed when the demo stops; --workdir keeps it)")
            self.story.say(f"logs and files: {self.dir}{kept}")
        else:
            self.story.say("[dim]keys, databases, journals, cards and logs were in a temporary directory that "
                           "is removed now; `--workdir DIR` keeps them[/]")


def _entropy(rng: random.Random) -> Any:
    return lambda n: rng.randbytes(n)


class Stopped(Exception):
    """The demo was asked to stop (SIGTERM, SIGHUP); everything it started is stopped first.

    :ivar signum: the signal number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` (SIGINT is KeyboardInterrupt already).

    Python's default SIGTERM ends the process without running ``finally``
    blocks, which left the server, counters and pcscd running. Only possible
    from the main thread; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stopped(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_day(opts: ScenarioOptions, story: Story | None = None) -> DayResult:
    """Run the whole scenario; everything started is stopped before returning (unless ``keep_running``).

    Everything started is also stopped when the run ends any other way: an
    exception, Ctrl-C (SIGINT), SIGTERM or SIGHUP (then :class:`Stopped` is raised
    after the stop). With ``keep_running`` the run waits for one of those.

    :raises ScenarioError: a step did not produce what the story needs.
    :raises Stopped: SIGTERM or SIGHUP arrived.
    """
    story = story or Story()
    day = Day(opts, story)
    with _stop_on_signals():
        try:
            day.start_pcscd()
            day.make_keys()
            day.start_central()
            day.enrol()
            day.provision()
            day.counter_day()
            day.audit()
            day.where()
            if opts.keep_running:
                story.say("[bold]running; Ctrl-C (or SIGTERM) stops everything[/]")
                try:
                    while True:
                        time.sleep(1)
                except (KeyboardInterrupt, Stopped) as exc:
                    story.say(f"stopping ({'Ctrl-C' if isinstance(exc, KeyboardInterrupt) else exc})")
        finally:
            # A second signal while stopping must not cut the stop short.
            with contextlib.suppress(ValueError):
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                    signal.signal(sig, signal.SIG_IGN)
            try:
                day.stop()
                if day.own_dir:
                    shutil.rmtree(day.dir, ignore_errors=True)
            finally:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGINT, signal.default_int_handler)
    return day.result
