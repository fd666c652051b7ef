"""The terminal's clocks: wall time, monotonic time and whether the wall clock is synchronised.

Cards have no clock (docs/design.md §Caps and offline limits), so every journal entry carries the
terminal's wall time *and* monotonic time plus a flag telling whether the
kernel considered the wall clock synchronised (NTP/chrony/GPS) when the entry
was written. The server measures skew from these; it never drops a signed
entry for a bad clock (docs/design.md §Journal).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: ``STA_UNSYNC`` in ``struct timex.status`` (Linux ``include/uapi/linux/timex.h``).
_STA_UNSYNC = 0x0040
#: ``TIME_ERROR``: adjtimex(2) return value meaning "clock not synchronised".
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # Linux struct timex (x86-64 / aarch64 layout: longs, then padding).
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    )


def kernel_clock_synced() -> bool:
    """Ask the kernel (adjtimex(2), read-only) whether the wall clock is synchronised.

    :returns: False when the kernel reports ``TIME_ERROR``/``STA_UNSYNC`` or the
        call is unavailable (non-Linux): an unknown clock is reported as unsynced.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()  # modes = 0: query only, needs no privilege
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR) and not tx.status & _STA_UNSYNC


@dataclass(frozen=True)
class Stamp:
    """One reading of the terminal clocks.

    :ivar wall: POSIX seconds (UTC) from the wall clock.
    :ivar mono: seconds from ``time.monotonic()`` — comparable only within one boot id.
    :ivar synced: whether the wall clock was synchronised at the time.
    """

    wall: float
    mono: float
    synced: bool


class Clock:
    """Reads the clocks; the sync state is re-queried at most every ``recheck_s`` seconds.

    :param force_synced: a fixed answer instead of asking the kernel (tests, or a
        profile that knows the clock is GPS-disciplined).
    """

    def __init__(self, *, force_synced: bool | None = None, recheck_s: float = 60.0) -> None:
        self._force = force_synced
        self._recheck_s = recheck_s
        self._synced = False
        self._checked_at = float("-inf")

    def now(self) -> Stamp:
        """The current stamp."""
        mono = time.monotonic()
        if self._force is not None:
            synced = self._force
        else:
            if mono - self._checked_at >= self._recheck_s:
                self._synced = kernel_clock_synced()
                self._checked_at = mono
            synced = self._synced
        return Stamp(wall=time.time(), mono=mono, synced=synced)
