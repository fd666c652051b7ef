"""Benefit cycles this process knows are stored, so an upload skips their insert (issue 21).

Every upload makes sure the ``benefit_cycles`` rows of its entries' cycles exist
(:func:`server.registry.ensure_cycles`, insert-if-absent). A cycle is half a year, so after
its first upload that insert finds the row every time; as an ORM statement it was about a
quarter of a small upload's CPU. :class:`KnownCycles` remembers, per process, the cycles whose
row a committed transaction wrote or found; only the others are inserted.

Correct with several worker processes (each has its own set; the insert stays idempotent)
and after a failover or a restore: the set is forgotten whenever the engine opens a new
database connection (the pool reconnects after a failover; a restored database is reached
through new connections), and a cycle added by a transaction that began before such a
forget is not remembered. A miss only costs the insert-if-absent again. The rows are
never deleted by the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, event


class KnownCycles:
    """Cycle ids (e.g. ``20261``) whose ``benefit_cycles`` row is known to be committed; thread-safe."""

    def __init__(self) -> None:
        self._ids: frozenset[int] = frozenset()
        self._generation = 0
        self._lock = threading.Lock()

    def missing(self, cycles: Iterable[int]) -> tuple[set[int], int]:
        """The cycles not known to be stored, and the generation to pass to :meth:`add`."""
        with self._lock:
            return set(cycles) - self._ids, self._generation

    def add(self, cycles: Iterable[int], generation: int) -> None:
        """Remember ``cycles`` after the transaction that ensured them committed.

        :param generation: from the :meth:`missing` call before that transaction; when
            :meth:`forget` ran since, nothing is remembered.
        """
        with self._lock:
            if generation == self._generation:
                self._ids = self._ids | frozenset(cycles)

    def forget(self) -> None:
        """Forget every cycle (a new database connection: maybe another server or a restored database)."""
        with self._lock:
            self._ids = frozenset()
            self._generation += 1

    def watch(self, engine: Engine) -> None:
        """Call :meth:`forget` whenever ``engine`` opens a new DB-API connection."""

        def _connected(_dbapi_connection: Any, _record: Any) -> None:
            self.forget()

        event.listen(engine, "connect", _connected)
