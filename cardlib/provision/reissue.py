"""Station inputs checked before any chip is touched: a re-issue's balance, and one batch per state directory.

- :func:`reissue_remaining`: a re-issued card carries the household's remaining entitlement as
  the server computed it from every uploaded journal and signed it with its receipt key
  (:mod:`cardlib.records.balance`); the technician may lower a figure (``--remaining``), never
  raise it, and never type one without the statement (docs/keys-and-provisioning.md
  "Re-issuing a lost card").
- :func:`check_remaining`: amounts are programmes of the card, 0..per_cycle.
- :func:`station_lock`: two provisioning runs on one state directory would journal card ids
  and write the issuance file over each other; the second is refused (exit status 2).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cardlib.keys.signer import PublicKey
from cardlib.provision.errors import ProvisionError, StationInputError
from cardlib.provision.households import Household
from cardlib.provision.profile import Profile
from cardlib.records.balance import BalanceStatementError, verify_balance
from cardlib.records.errors import RecordError

__all__ = ["LOCK_NAME", "StationBusy", "check_remaining", "parse_remaining", "reissue_remaining", "station_lock"]

#: The lock file in a state directory: one line, the holder's PID.
LOCK_NAME = "station.lock"
#: Clock difference tolerated between the server (statement time) and the station, seconds.
CLOCK_SLACK_S = 300


class StationBusy(ProvisionError):
    """Another provisioning run holds this state directory's lock."""


def parse_remaining(text: str) -> dict[int, int]:
    """``'1=0,2=100000'`` → ``{1: 0, 2: 100000}``.

    :raises StationInputError: not ``programme=amount`` pairs of integers, or a programme twice.
    """
    out: dict[int, int] = {}
    try:
        for part in text.split(","):
            key, value = part.split("=")
            pid = int(key)
            if pid in out:
                raise ValueError
            out[pid] = int(value)
    except ValueError:
        raise StationInputError(f"--remaining: {text!r} is not 'programme=amount,...' "
                                "(integers, each programme once, e.g. '1=0,2=100000')") from None
    return out


def check_remaining(profile: Profile, household: Household, remaining: Mapping[int, int]) -> None:
    """Every programme of the card has an amount, 0..its per-cycle entitlement, and no other programme.

    :raises StationInputError: naming each bad programme (found before the chip is touched).
    """
    problems = []
    for pid in sorted(set(remaining) - set(household.programmes)):
        problems.append(f"programme {pid} is not on this card (programmes {list(household.programmes)})")
    for pid in household.programmes:
        if pid not in remaining:
            problems.append(f"programme {pid}: no remaining amount")
            continue
        per_cycle = profile.programmes[pid].per_cycle
        if not 0 <= remaining[pid] <= per_cycle:
            problems.append(f"programme {pid}: {remaining[pid]} is not within 0..{per_cycle} (per cycle)")
    if problems:
        raise StationInputError("remaining entitlement: " + "; ".join(problems))


def reissue_remaining(statement: bytes, server_key: PublicKey, household: Household, reissue_of: bytes, now: int,
                      profile: Profile, lower: Mapping[int, int] | None = None) -> dict[int, int]:
    """The genesis balance of a re-issued card: the server's signed figure, optionally lowered.

    :param statement: the server's balance statement (COSE_Sign1 bytes).
    :param server_key: the server receipt key's public key, pinned at the station.
    :param household: the card's household row. :param reissue_of: the lost card's id, 8 bytes.
    :param now: the station's POSIX seconds. :param lower: ``--remaining``: may only lower amounts.
    :returns: programme id → amount for every programme of the card, checked by :func:`check_remaining`.
    :raises StationInputError: the statement does not verify, is for another household or card, is
        out of date or of another cycle, misses a programme of the card, or ``lower`` raises an amount.
    """
    try:
        s = verify_balance(statement, server_key)
    except (RecordError, BalanceStatementError) as exc:
        raise StationInputError(f"balance statement does not verify under the server key: {exc}") from exc
    if s.household_ref != household.household_ref:
        raise StationInputError(f"balance statement is for household {s.household_ref.hex()}, "
                                f"not {household.ref_hex}")
    if s.reissue_of != reissue_of:
        shown = s.reissue_of.hex() if s.reissue_of else "no card"
        raise StationInputError(f"balance statement is for re-issuing {shown}, not {reissue_of.hex()}")
    if not s.time - CLOCK_SLACK_S <= now <= s.valid_until:
        raise StationInputError("balance statement is out of date: fetch a new one "
                                "(huma server household statement / POST /api/v1/households/<ref>/balance-statement)")
    if s.cycle != profile.cycle_at(now):
        raise StationInputError(f"balance statement is for cycle {s.cycle}, the card starts in {profile.cycle_at(now)}")
    missing = [pid for pid in household.programmes if pid not in s.remaining]
    if missing:
        raise StationInputError(f"the server knows no entitlement of this household for programme(s) {missing}")
    remaining = {pid: s.remaining[pid] for pid in household.programmes}
    if lower is not None:
        raised = [f"{pid}: {v} > {remaining.get(pid)}" for pid, v in sorted(lower.items())
                  if pid in remaining and v > remaining[pid]]
        if raised:
            raise StationInputError("--remaining may only lower the server's figure: " + "; ".join(raised))
        remaining.update(lower)  # a programme not on the card is refused below
    check_remaining(profile, household, remaining)
    return remaining


@contextmanager
def station_lock(state_dir: Path) -> Iterator[Path]:
    """Hold ``<state_dir>/station.lock`` (flock, PID on its one line) for one provisioning run.

    The lock is the open file's ``flock``: a crashed run leaves the file but not the lock.

    :raises StationBusy: another run holds it (its PID is named).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise StationBusy(f"{state_dir} is in use by another provisioning run (pid {holder}); "
                              "wait for it to finish or use another --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)
