"""The counter's trust store: the installed trust bundle and what the counter remembers about the chain.

docs/security.md, "Trust bundle and its keys". Files next to ``<bundle_path>``:

- ``<bundle_path>``: the signed bundle bytes as downloaded;
- ``<bundle_path>.state.json``: ``etag``, ``checked_at`` (POSIX seconds) and the trust
  state kept apart from the bundle file — the installed bundle's version and SHA-256,
  per bundle key (kid hex) the highest version and ``issued_at`` installed from it, and
  the root's revocations learnt so far (serial and kids);
- ``<bundle_path>.pin.json``: ``{"version", "sha256", "signer"}`` of the server's newest bundle at
  enrolment (:func:`pin_enrolment_bundle`), the floor of a fresh counter;
- ``<bundle_path>.floor.json``: ``{"signers": {kid hex: version}, "time_mark": seconds,
  "journal_mark_ignored_upto": seconds}``, a
  second, independent record of the highest version installed from each bundle key (never
  lowered), so that rewriting the state file alone cannot roll the bundle back, and the
  counter's high-water mark of trusted time (never lowered by the clock): the latest clock reading, check
  time (``checked_at``) or install the store has seen, saved at least every
  :data:`MARK_SAVE_STEP_S` it rises. Only the server's signed time lowers it
  (:meth:`TrustStore.set_server_time`, after a clock glitch ahead), and a journal newest wall
  time that ran ahead of the server's time is kept there as no floor any more
  (``journal_mark_ignored_upto``, absent when none).

Rules on every download (:meth:`TrustStore.install`):

1. a root-signed revocation list in the file is learnt first, even if the bundle is then
   refused (it is the root's word, not the bundle key's);
2. the bundle verifies under the pinned root at the *trusted time*: the latest of the
   system clock, the time mark and the newest ``issued_at`` installed from a key not revoked
   (a clock set back cannot revive an expired endorsement nor an expired bundle);
3. its key is on no revocation list; its endorsement is valid now and covers ``issued_at``;
4. its programmes pass :func:`cardlib.records.bundle.validate_programmes`;
5. its version is not below the enrolment pin nor the highest version installed from a
   key not revoked, nor more than :data:`cardlib.records.bundle.MAX_VERSION_STEP` above it.

On load the stored file must be the installed one (same SHA-256) and verify again, so a
file swapped for an older, validly signed bundle is refused; it must not be older than the
floor record from a key not revoked, and a state file without the trust state (written
before it existed) is adopted only on a counter that never wrote a floor record. An install cut
short between saving the state and its last rename (``<bundle_path>.new`` holds the bundle the
state names) is finished on load. :meth:`TrustStore.open_read_only` loads the same way but writes
no file and finishes no install: it reports one (:attr:`TrustStore.unfinished_install`). A bundle whose time is over
(:attr:`cardlib.records.bundle.TrustBundle.in_force_until`) or whose key was revoked
stays loaded but :attr:`terminal.tap.Trust.expired` is set: cash stops, balance checks go on.
:meth:`TrustStore.current` hands the time mark on (:attr:`terminal.tap.Trust.mark`): a clock
set back below it is ``counter_clock_wrong`` (:func:`terminal.tap.clock_wrong`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardlib.fsutil import atomic_write
from cardlib.keys.signer import PublicKey
from cardlib.records.bundle import (
    BundleError,
    TrustBundle,
    bundle_revocations,
    check_version_step,
    validate_programmes,
    verify_bundle,
)
from terminal.errors import TrustStoreError, TrustStoreReadOnly
from terminal.tap import CLOCK_BACK_TOLERANCE_S, Trust, plausible_until

log = logging.getLogger(__name__)

#: The time mark is saved to the floor record when it has risen this much since last saved (seconds).
MARK_SAVE_STEP_S = 60


def pin_path(bundle_path: str | Path) -> Path:
    """Where the enrolment pin of the counter whose bundle is ``bundle_path`` is kept."""
    path = Path(bundle_path)
    return path.with_name(path.name + ".pin.json")


def pin_enrolment_bundle(bundle_path: str | Path, data: bytes, root_public_key: PublicKey, now: float) -> int | None:
    """Pin the server's newest bundle at enrolment, from its signed bytes only: the first bundle must be it or newer.

    The bytes must verify under the pinned root at ``now`` (endorsement, signature,
    programmes), so an answer nobody signed cannot set the floor (a version of 2^62 would
    lock out every later bundle). A counter that holds a pin, or has installed a bundle
    already, keeps its floor: nothing is written.

    :param data: the bundle bytes as downloaded (``GET /api/v1/bundle``).
    :param root_public_key: the root the counter was provisioned with.
    :param now: POSIX seconds of the check.
    :returns: the pinned version, or None when the counter already had a pin or a bundle.
    :raises TrustStoreError: the bytes do not verify (nothing is pinned).
    """
    path = Path(bundle_path)
    if pin_path(path).exists() or path.exists():
        return None
    try:
        bundle = verify_bundle(data, root_public_key, now=int(now))
        validate_programmes(bundle.programmes)
    except BundleError as exc:
        raise TrustStoreError(f"the server's bundle at enrolment does not verify, nothing pinned: {exc}") from exc
    atomic_write(pin_path(path), json.dumps({"version": bundle.version, "sha256": hashlib.sha256(data).hexdigest(),
                                             "signer": bundle.signer_kid.hex()}).encode())
    return bundle.version


class TrustStore:
    """The installed trust bundle on disk, verified under the pinned root key (module doc: files, rules).

    :param bundle_path: where the bundle is kept.
    :param root_public_key: the pinned root key (endorses bundle keys, signs revocations).
    :param clock: POSIX seconds (the system clock; tests pass their own).
    :raises TrustStoreError: a stored bundle exists but does not verify, is not the one
        installed (swapped), or its trust state is missing.
    :raises OSError: adopting a legacy install or finishing a cut-short one could not write its files.
    """

    def __init__(self, bundle_path: str | Path, root_public_key: PublicKey,
                 clock: Callable[[], float] = time.time) -> None:
        self._start(bundle_path, root_public_key, clock, read_only=False)

    @classmethod
    def open_read_only(cls, bundle_path: str | Path, root_public_key: PublicKey,
                       clock: Callable[[], float] = time.time) -> TrustStore:
        """The installed bundle as the daemon loads it, writing no file (``huma terminal status``).

        Every check of a load is made (installed SHA-256, signature under the root, floor record,
        enrolment pin, revocations), but nothing is saved: not the state of a legacy install
        adopted, not the time mark a clock reading raises (kept in memory). An install cut short
        before its last rename is not finished: the bundle the state names is loaded from
        ``<bundle_path>.new`` (verified the same way) and :attr:`unfinished_install` names that
        file; the daemon's :class:`TrustStore` renames it at its next start.
        :meth:`install`, :meth:`confirm` and :meth:`set_server_time` raise
        :class:`terminal.errors.TrustStoreReadOnly`.

        :param bundle_path: where the bundle is kept (the profile's ``bundle``).
        :param root_public_key: the pinned root key.
        :param clock: POSIX seconds.
        :returns: the read-only store (:attr:`read_only` True).
        :raises TrustStoreError: as the daemon's load: the stored bundle does not verify, is not the
            installed one (and no ``.new`` is), is older than the floor record or the pin, or a state,
            pin or floor file is unreadable.
        """
        store = cls.__new__(cls)
        store._start(bundle_path, root_public_key, clock, read_only=True)
        return store

    def _start(self, bundle_path: str | Path, root_public_key: PublicKey, clock: Callable[[], float], *,
               read_only: bool) -> None:
        """Read the state, pin and floor files and load the stored bundle (both constructors)."""
        self._read_only = read_only
        #: ``<bundle_path>.new`` when a read-only open found an install cut short before its last rename
        #: (the bundle was loaded from it), else None.
        self.unfinished_install: Path | None = None
        self.path = Path(bundle_path)
        self._state_path = self.path.with_name(self.path.name + ".state.json")
        self._new_path = self.path.with_name(self.path.name + ".new")
        self._floor_path = self.path.with_name(self.path.name + ".floor.json")
        self._root = root_public_key
        self._clock = clock
        self._lock = threading.Lock()
        self._bundle: TrustBundle | None = None
        self._data: bytes | None = None
        self.etag: str | None = None
        self.checked_at = 0.0
        state = self._read_state()
        # a state file written before the trust state existed: etag and checked_at only
        self._legacy = bool(state) and "signers" not in state
        self.etag, self.checked_at = state.get("etag"), float(state.get("checked_at", 0.0))
        self._installed: dict[str, Any] | None = state.get("installed")
        self._signers: dict[str, dict[str, int]] = dict(state.get("signers", {}))
        revocations = state.get("revocations", {})
        self._revocation_serial = int(revocations.get("serial", -1))
        self._revoked = frozenset(bytes.fromhex(k) for k in revocations.get("revoked", ()))
        self._pin = self._read_pin()
        self._recorded, self._mark_saved, self._journal_ignored = self._read_floor()
        self._mark = max(self._mark_saved, int(self.checked_at))
        if self.path.is_file():
            self._load()

    # ------------------------------------------------------------------ loading

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TrustStoreError(f"trust state {self._state_path} is unreadable: {exc}") from exc
        if not isinstance(state, dict):
            raise TrustStoreError(f"trust state {self._state_path} is not a JSON object")
        return state

    def _read_pin(self) -> dict[str, Any] | None:
        try:
            pin = json.loads(pin_path(self.path).read_text())
            return {"version": int(pin["version"]), "sha256": str(pin["sha256"]),
                    "signer": bytes.fromhex(pin["signer"]) if "signer" in pin else None}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrustStoreError(f"enrolment pin {pin_path(self.path)} is unreadable: {exc!r}") from exc

    def _read_floor(self) -> tuple[dict[str, int] | None, int, float]:
        try:
            record = json.loads(self._floor_path.read_text())
            return ({str(k): int(v) for k, v in record["signers"].items()}, int(record.get("time_mark", 0)),
                    float(record.get("journal_mark_ignored_upto", 0.0)))
        except FileNotFoundError:
            return None, 0, 0.0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrustStoreError(f"trust floor record {self._floor_path} is unreadable: {exc!r}") from exc

    @property
    def read_only(self) -> bool:
        """Opened by :meth:`open_read_only`: no file is written, the writing methods raise."""
        return self._read_only

    def _writable(self) -> None:
        """:raises TrustStoreReadOnly: the store was opened by :meth:`open_read_only`."""
        if self._read_only:
            raise TrustStoreReadOnly(f"trust store {self.path} is open read-only; nothing written")

    def _load(self) -> None:
        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self._installed is None:
            if not self._legacy:
                raise TrustStoreError(f"stored trust bundle {self.path} was never installed by this counter "
                                      f"(no record in {self._state_path}); refused")
            if self._recorded is not None:
                raise TrustStoreError(f"trust state {self._state_path} looks written before versions were kept, "
                                      f"but this counter recorded installs in {self._floor_path}: refused "
                                      f"(state file rewritten to roll the bundle back?)")
            log.warning("trust bundle %s has no trust state (installed before versions were kept); "
                        "adopting it as installed", self.path)
        elif digest != self._installed["sha256"]:
            new = self._new_path.read_bytes() if self._new_path.is_file() else None
            if new is None or hashlib.sha256(new).hexdigest() != self._installed["sha256"]:
                raise TrustStoreError(f"stored trust bundle {self.path} is not the installed one "
                                      f"(v{self._installed['version']}, sha256 {self._installed['sha256'][:16]}…): "
                                      f"refused (swapped for another file?)")
            # an install cut short before its last rename
            if not self._read_only:
                os.replace(self._new_path, self.path)
                self._load()
                return
            log.warning("trust bundle install cut short: %s not yet renamed to %s", self._new_path, self.path)
            self.unfinished_install, data = self._new_path, new
        try:
            bundle = verify_bundle(data, self._root, revoked=self._revoked)
        except BundleError as exc:
            raise TrustStoreError(f"stored trust bundle {self.path} does not verify: {exc}") from exc
        recorded = max((v for k, v in (self._recorded or {}).items() if bytes.fromhex(k) not in self._revoked),
                       default=None)
        pin = self._live_pin()
        if pin is not None and self._installed is None and bundle.version < pin["version"]:
            recorded = max(recorded or 0, pin["version"])
        if recorded is not None and bundle.version < recorded:
            raise TrustStoreError(f"stored trust bundle {self.path} is v{bundle.version}, older than v{recorded} "
                                  f"recorded in {self._floor_path} or the enrolment pin: refused (rolled back?)")
        self._bundle, self._data = bundle, data
        if self._installed is None:
            self._record(bundle, digest)
            if not self._read_only:
                self._save_state()

    # ------------------------------------------------------------------ queries

    @property
    def version(self) -> int | None:
        """Version of the installed bundle, or None."""
        with self._lock:
            return None if self._bundle is None else self._bundle.version

    def trusted_time(self, now: float | None = None) -> int:
        """The latest of the clock, the time mark and the newest ``issued_at`` installed from a key not
        revoked (UNIX seconds)."""
        with self._lock:
            return self._trusted_time(self._clock() if now is None else now)

    def current(self, now: float | None = None) -> Trust:
        """The bundle in force, when it was last confirmed current, and whether it is expired.

        Expired: the trusted time is past :attr:`TrustBundle.in_force_until`, or its key
        was revoked by the root. The clock reading raises the time mark, handed on as
        :attr:`terminal.tap.Trust.mark`.

        :raises TrustStoreError: no bundle installed yet.
        """
        with self._lock:
            if self._bundle is None:
                raise TrustStoreError(f"no trust bundle installed at {self.path}; the terminal must sync once")
            at = self._clock() if now is None else now
            self._raise_mark(at)
            trusted = self._trusted_time(at)
            expired = trusted > self._bundle.in_force_until or self._bundle.signer_kid in self._revoked
            return Trust(self._bundle, self.checked_at, expired=expired, mark=float(self._mark),
                         journal_ignored_upto=self._journal_ignored)

    # ------------------------------------------------------------------ install

    def install(self, data: bytes, etag: str | None, now: float | None = None) -> bool:
        """Verify and install downloaded bundle bytes; same bytes only confirm the held bundle.

        :param now: POSIX seconds of the check (default: the clock).
        :returns: True when a new bundle was installed.
        :raises TrustStoreError: bad signature/structure, a revoked key, an endorsement not
            valid at the trusted time, bad programmes, a version below the held one or the
            enrolment pin, or a jump past :data:`cardlib.records.bundle.MAX_VERSION_STEP`.
        :raises TrustStoreReadOnly: the store was opened by :meth:`open_read_only` (nothing learnt or written).
        """
        self._writable()
        at = self._clock() if now is None else now
        with self._lock:
            if self._bundle is None or at <= plausible_until(self._bundle):
                self._mark = max(self._mark, int(at))  # saved with the state below
            if self._data == data:
                self._confirm(etag or self.etag, at)
                return False
            self._learn_revocations(data)
            digest = hashlib.sha256(data).hexdigest()
            try:
                bundle = verify_bundle(data, self._root, now=self._trusted_time(at), revoked=self._revoked)
                validate_programmes(bundle.programmes)
            except BundleError as exc:
                raise TrustStoreError(f"downloaded trust bundle refused: {exc}") from exc
            self._check_version(bundle, digest)
            atomic_write(self._new_path, data)
            self._record(bundle, digest)
            self.etag, self.checked_at = etag, at
            self._save_state()
            os.replace(self._new_path, self.path)
            self._bundle, self._data = bundle, data
            log.info("trust bundle v%d installed (deny list: %d cards, %d UIDs)", bundle.version,
                     len(bundle.deny_cards), len(bundle.deny_uids))
            return True

    def confirm(self, now: float | None = None) -> None:
        """The server said the held bundle is still the newest (304): its age restarts.

        :raises TrustStoreReadOnly: the store was opened by :meth:`open_read_only`.
        """
        self._writable()
        with self._lock:
            self._confirm(self.etag, self._clock() if now is None else now)

    def set_server_time(self, server_time: int, journal_mark: float = 0.0) -> bool:
        """Put the time mark right by the server's time from a verified, nonce-bound freshness statement.

        Call only after the statement verified under the pinned server key, answered this
        counter's own nonce and named the bundle (:meth:`terminal.sync.SyncClient.refresh_bundle`):
        the server's ``server_time`` is then the true time. A mark more than
        :data:`terminal.tap.CLOCK_BACK_TOLERANCE_S` above it (a clock that jumped ahead by mistake)
        is lowered to it, never below; a ``journal_mark`` that far above it stops being a floor
        (:attr:`terminal.tap.Trust.journal_ignored_upto`) until the journal holds a later entry;
        a ``checked_at`` that far above it is set to it. Saved in the floor record. Within the
        tolerance nothing changes (an honest counter: nothing written).

        :param server_time: the statement's time, POSIX seconds.
        :param journal_mark: the journal's newest wall time now, POSIX seconds
            (:meth:`terminal.journal_store.JournalStore.wall_mark`).
        :returns: True when the mark, the ignored journal time or ``checked_at`` changed.
        :raises OSError: the floor record or the trust state cannot be written.
        :raises TrustStoreReadOnly: the store was opened by :meth:`open_read_only`.
        """
        self._writable()
        limit = int(server_time) + CLOCK_BACK_TOLERANCE_S
        with self._lock:
            changed = False
            if self._mark > limit:
                log.warning("clock mark lowered from %s to server time %s", _utc(self._mark), _utc(server_time))
                self._mark, changed = int(server_time), True
            if journal_mark > limit and journal_mark > self._journal_ignored:
                log.warning("journal's newest wall time %s is ahead of server time %s: no longer a floor",
                            _utc(journal_mark), _utc(server_time))
                self._journal_ignored, changed = float(journal_mark), True
            if self.checked_at > limit:
                self.checked_at, changed = float(server_time), True
            if changed:
                self._save_floor(lower=True)
                self._save_state()
            ahead = self._clock() - server_time
            if ahead > CLOCK_BACK_TOLERANCE_S:
                log.warning("the counter's clock is %.0f s ahead of the server's time: put it right", ahead)
            return changed

    # ------------------------------------------------------------------ internals (lock held)

    def _live_signers(self) -> list[dict[str, int]]:
        return [v for k, v in self._signers.items() if bytes.fromhex(k) not in self._revoked]

    def _trusted_time(self, now: float) -> int:
        return max([int(now), self._mark, *(v["issued_at"] for v in self._live_signers())])

    def _raise_mark(self, at: float) -> None:
        """Raise the time mark to ``at`` (POSIX seconds); save it once it rose :data:`MARK_SAVE_STEP_S`.

        A reading after :func:`terminal.tap.plausible_until` of the held bundle is ignored (a clock
        that far ahead is already wrong; the mark would stop the counter until real time got there).
        A read-only store keeps the raised mark in memory only.
        """
        if self._bundle is not None and at > plausible_until(self._bundle):
            return
        self._mark = max(self._mark, int(at))
        if self._mark >= self._mark_saved + MARK_SAVE_STEP_S and not self._read_only:
            try:
                self._save_floor()
            except OSError as exc:  # the journal's newest wall time is a second floor (terminal.tap)
                log.warning("time mark not saved to %s: %s", self._floor_path, exc)

    def _live_pin(self) -> dict[str, Any] | None:
        """The enrolment pin, unless the bundle key that signed the pinned bundle was revoked since."""
        pin = self._pin
        if pin is not None and pin["signer"] is not None and pin["signer"] in self._revoked:
            return None
        return pin

    def _floor(self) -> int | None:
        versions = [v["version"] for v in self._live_signers()]
        pin = self._live_pin()
        if pin is not None:
            versions.append(pin["version"])
        return max(versions, default=None)

    def _learn_revocations(self, data: bytes) -> None:
        try:
            revocations = bundle_revocations(data, self._root)
        except BundleError as exc:
            raise TrustStoreError(f"downloaded trust bundle refused: {exc}") from exc
        if revocations is None or revocations.serial <= self._revocation_serial:
            return
        learnt = revocations.revoked - self._revoked
        self._revoked = self._revoked | revocations.revoked
        self._revocation_serial = revocations.serial
        self._save_state()
        for kid in sorted(learnt):
            log.warning("the root revoked bundle key %s: nothing it signs is installed again", kid.hex())

    def _check_version(self, bundle: TrustBundle, digest: str) -> None:
        pin = self._live_pin()
        if pin is not None and bundle.version < pin["version"]:
            raise TrustStoreError(f"downloaded trust bundle v{bundle.version} is older than v{pin['version']} "
                                  f"pinned at enrolment; refused")
        if pin is not None and bundle.version == pin["version"] and digest != pin["sha256"]:
            raise TrustStoreError(f"downloaded trust bundle v{bundle.version} is not the one pinned at enrolment "
                                  f"(other bytes); refused")
        held = self._installed
        if (held is not None and bundle.version == held["version"] and self._bundle is not None
                and self._bundle.signer_kid not in self._revoked):
            raise TrustStoreError(f"downloaded bundle has the held version {held['version']} but other bytes; "
                                  f"refused")
        try:
            check_version_step(bundle.version, self._floor())
        except BundleError as exc:
            raise TrustStoreError(f"downloaded trust bundle refused: {exc}") from exc

    def _record(self, bundle: TrustBundle, digest: str) -> None:
        self._installed = {"version": bundle.version, "sha256": digest, "signer": bundle.signer_kid.hex()}
        seen = self._signers.get(bundle.signer_kid.hex(), {"version": bundle.version, "issued_at": bundle.issued_at})
        self._signers[bundle.signer_kid.hex()] = {"version": max(seen["version"], bundle.version),
                                                  "issued_at": max(seen["issued_at"], bundle.issued_at)}

    def _confirm(self, etag: str | None, at: float) -> None:
        self.etag, self.checked_at = etag, at
        if self._bundle is None or at <= plausible_until(self._bundle):
            self._mark = max(self._mark, int(at))
        self._save_state()

    def _save_floor(self, lower: bool = False) -> None:
        """Write the floor record if its versions or the time mark rose (versions never lowered; the
        mark only with ``lower``, by :meth:`set_server_time`).

        :raises TrustStoreReadOnly: the store was opened by :meth:`open_read_only` (a path missed its guard).
        """
        self._writable()
        recorded = dict(self._recorded or {})
        for kid, seen in self._signers.items():
            recorded[kid] = max(recorded.get(kid, seen["version"]), seen["version"])
        mark = self._mark if lower else max(self._mark, self._mark_saved)
        if recorded != self._recorded or mark > self._mark_saved or lower:
            record: dict[str, Any] = {"signers": recorded, "time_mark": mark}
            if self._journal_ignored:
                record["journal_mark_ignored_upto"] = self._journal_ignored
            atomic_write(self._floor_path, json.dumps(record, sort_keys=True).encode())
            self._recorded, self._mark_saved = recorded, mark

    def _save_state(self) -> None:
        self._writable()
        # The floor record first, never lowered: a crash between the two writes leaves it ahead.
        self._save_floor()
        state: dict[str, Any] = {"etag": self.etag, "checked_at": self.checked_at, "signers": self._signers,
                                 "revocations": {"serial": self._revocation_serial,
                                                 "revoked": sorted(k.hex() for k in self._revoked)}}
        if self._installed is not None:
            state["installed"] = self._installed
        atomic_write(self._state_path, json.dumps(state, sort_keys=True).encode())


def _utc(seconds: float) -> str:
    """POSIX seconds as an ISO 8601 UTC time, for the log."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")
