"""Key hierarchy and key storage: root → issuer, terminal CA, bundle, technician keys.

Public API:

- :class:`~cardlib.keys.signer.Signer` (``sign``, ``kid``, ``alg``, ``public_key``),
  :class:`~cardlib.keys.signer.SoftwareSigner`, :func:`~cardlib.keys.signer.derive_kid`,
  :func:`~cardlib.keys.signer.sign1_with`, :func:`~cardlib.keys.signer.cose_key`
- :class:`~cardlib.keys.keystore.KeyStore`, :class:`~cardlib.keys.keystore.Role`,
  :class:`~cardlib.keys.keystore.KeyStatus`, :func:`~cardlib.keys.keystore.verify_endorsement`
- :func:`~cardlib.keys.pkcs8.save_private_key` / :func:`~cardlib.keys.pkcs8.load_private_key`
- :class:`~cardlib.keys.terminal_ca.TerminalCA`, :func:`~cardlib.keys.terminal_ca.make_terminal_csr`,
  :func:`~cardlib.keys.terminal_ca.verify_terminal_certificate`
- ``cardlib.keys.pkcs11.Pkcs11Token`` (extra ``pkcs11``; imported on demand)
"""
