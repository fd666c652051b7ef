"""A live test server whose terminal CA chains to a test root, as `huma keys issue terminal-ca` makes it.

The shared ``app`` fixture runs a self-signed development terminal CA; a counter checks the
certificate answer against the root it pins (docs/security.md "Enrolment: the counter's pins"),
so enrolment tests give the server a CA certificate issued by their own root.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from cardlib.keys.keystore import _ca_certificate, root_common_name, terminal_ca_common_name
from cardlib.keys.signer import SoftwareSigner


def chain_server_ca_to(root: SoftwareSigner, world: Any, ca_key_path: Path, tmp_path: Path) -> Path:
    """Certify the live server's terminal CA key with ``root`` and configure it (``TERMINAL_CA_CERT``).

    :returns: the CA certificate file (PEM).
    """
    ca = SoftwareSigner(serialization.load_pem_private_key(ca_key_path.read_bytes(), None))  # type: ignore[arg-type]
    now = int(time.time())
    cert = _ca_certificate(ca.public_key, terminal_ca_common_name(ca.kid), root, root_common_name(root.kid),
                           now - 300, now + 10 * 365 * 86400, path_length=0)
    path = tmp_path / "terminal-ca.crt.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    world.client.application.config["TERMINAL_CA_CERT"] = str(path)
    return path


def unpin_receipt_key(state: Path) -> None:
    """Remove the receipt key ``make_counter`` pins: a counter fresh from ``huma terminal init`` pins none."""
    (state / "terminal-key.receipt-key.pem").unlink()
