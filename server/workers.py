"""Several waitress processes on one listening socket: ``huma server run --workers N``.

One server process verifies Ed25519 signatures on one core (its request threads
share one GIL). The supervisor binds the socket once and starts ``N`` worker
processes (``python -m server.workers``) that inherit it; the kernel hands each
new connection to whichever worker accepts first, so an idle worker takes it.
The workers share nothing but the database: every piece of state that matters
(journal, login throttle, sessions, enrolment) is in it, and the receipt key file
is created with an exclusive link (:mod:`server.receipts`). Per process are only
caches and the scrypt slots (:func:`server.auth.hash_slots`: ``N`` × cores hashes
at most at once).

A worker that dies is restarted; one that dies within :data:`EARLY_EXIT_S` of its
start (bad configuration, database gone) stops the supervisor with exit status 1.
SIGTERM/SIGINT to the supervisor is passed on; workers finish their requests
(waitress shuts its threads down) and exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

#: A worker exiting this soon after its start is a configuration fault, not a crash to restart (seconds).
EARLY_EXIT_S = 5.0
#: How long stopping workers may take before they are killed (seconds).
STOP_TIMEOUT_S = 15.0
#: Supervisor poll interval (seconds).
_POLL_S = 0.2


def _spawn(fd: int, threads: int, database_url: str, ready_fd: int = -1) -> tuple[subprocess.Popen[bytes], float]:
    env = dict(os.environ, DATABASE_URL=database_url)
    proc = subprocess.Popen([sys.executable, "-m", "server.workers", "--fd", str(fd), "--threads", str(threads),
                             "--ready-fd", str(ready_fd)], pass_fds=(fd,) if ready_fd < 0 else (fd, ready_fd),
                            env=env)
    return proc, time.monotonic()


def _await_ready(read_fd: int, workers: int, running: list[tuple[subprocess.Popen[bytes], float]]) -> bool:
    """Wait until every worker has its app and server (one byte each on the pipe) or one exited."""
    got = 0
    while got < workers:
        if any(proc.poll() is not None for proc, _ in running):
            return False
        if select.select([read_fd], [], [], _POLL_S)[0]:
            got += len(os.read(read_fd, workers))
    return True


def supervise(listener: socket.socket, database_url: str, *, workers: int, threads: int,
              on_ready: Callable[[], None] | None = None) -> int:
    """Run ``workers`` waitress processes on ``listener`` until SIGTERM/SIGINT; restart crashed ones.

    :param listener: a bound, listening TCP socket (inherited by the workers).
    :param database_url: the database every worker opens (also passed as ``DATABASE_URL``).
    :param threads: waitress threads per worker.
    :param on_ready: called once every worker serves (e.g. print "serving on ...").
    :returns: exit status: 0 after a stop signal, 1 when a worker failed right after its start.
    """
    listener.set_inheritable(True)
    fd = listener.fileno()
    read_fd, write_fd = os.pipe()
    running = [_spawn(fd, threads, database_url, write_fd) for _ in range(workers)]
    os.close(write_fd)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        ready = _await_ready(read_fd, workers, running)
        os.close(read_fd)
        if ready and on_ready is not None:
            on_ready()
        while not stopping:
            time.sleep(_POLL_S)
            for i, (proc, started) in enumerate(running):
                code = proc.poll()
                if code is None or stopping:
                    continue
                if time.monotonic() - started < EARLY_EXIT_S:
                    log.error("worker %d exited with status %s right after its start: stopping", proc.pid, code)
                    stopping, status = True, 1
                    break
                log.warning("worker %d exited with status %s: starting another", proc.pid, code)
                running[i] = _spawn(fd, threads, database_url)
    finally:
        for proc, _ in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc, _ in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        listener.close()
    return status


def _worker(fd: int, threads: int, ready_fd: int) -> None:
    """One worker: the app from the environment, waitress on the inherited socket, until SIGTERM."""
    import waitress

    from server import create_app
    from server.http import waitress_options

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)  # waitress's run() shuts its threads down on SystemExit

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # Ctrl-C reaches the whole group: the supervisor decides
    app = create_app()
    sock = socket.socket(fileno=fd)
    server_ = waitress.create_server(app, sockets=[sock], threads=threads, **waitress_options(app))
    if ready_fd >= 0:
        os.write(ready_fd, b"r")
        os.close(ready_fd)
    server_.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one worker of `huma server run --workers N` (internal)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, default=-1)
    args = parser.parse_args()
    _worker(args.fd, args.threads, args.ready_fd)
