"""Red team r5: ``huma sim pcscd``'s virtual readers take a card from anyone on the network.

vpcd (the virtual reader driver) listens on every interface (``DEVICENAME /dev/null:<port>``), so
while ``huma sim pcscd`` runs (a developer's PC, a training counter, the demo) a peer on the same
network connects to a printed vpcd port before the simulator's card and is the card on that reader,
for every PC/SC client of that pcscd (a counter daemon, ``huma provision``). The harness only
isolates pcscd's socket directory (a private mount namespace), not the network. Closing it needs vpcd
bound to 127.0.0.1 (not a driver option) or pcscd in its own network namespace with the cards inside:
not done; docs/security.md lists it.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from simulator.harness import private_namespace_possible


def _external_address() -> str | None:
    """This machine's address on its first non-loopback interface, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.mark.skipif(not private_namespace_possible(), reason="needs a private mount namespace")
@pytest.mark.xfail(strict=True, reason="vpcd listens on every interface; no bind option (docs/security.md r5)")
def test_a_vpcd_port_is_not_reachable_from_the_network(tmp_path: Path) -> None:
    from simulator.harness import PcscdReaders, serve_pcscd

    address = _external_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address")
    reachable: list[bool] = []
    stop = threading.Event()

    def ready(readers: PcscdReaders) -> None:
        try:
            port = readers.slots[0][1]
            with socket.create_connection((address, port), timeout=2):
                reachable.append(True)
        except OSError:
            reachable.append(False)
        finally:
            stop.set()

    serve_pcscd(slots=2, workdir=tmp_path, ready=ready, stop=stop)
    assert reachable == [False]
