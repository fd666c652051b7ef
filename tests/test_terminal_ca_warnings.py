"""The terminal CA's configuration warnings are logged once per process, not at every approval (issue 21).

``huma sim district`` approves 300 counters with an unencrypted CA key and no CA certificate;
each approval loads the CA, and each load logged both warnings: 600 lines.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def test_ca_warnings_are_logged_once(tmp_path, caplog):
    from server import create_app
    from server.terminals import terminal_ca

    key_path = tmp_path / "keys" / "ca.p8.pem"
    key_path.parent.mkdir()
    key_path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'huma.db'}",
                      "TERMINAL_CA_KEY": str(key_path)})
    with caplog.at_level(logging.WARNING, logger="server.terminals"), app.app_context():
        for _ in range(3):
            terminal_ca()
    messages = [r.getMessage() for r in caplog.records if r.name == "server.terminals"]
    assert len(messages) == 2, messages
    assert any("not encrypted" in m for m in messages) and any("self-signed" in m for m in messages)
