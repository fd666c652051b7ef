"""Card provisioning: households CSV → journalled, resumable issuance of NTAG215/216 cards.

- :mod:`~cardlib.provision.households` (CSV validation), :mod:`~cardlib.provision.regions`
- :mod:`~cardlib.provision.card` (per-card steps: check, write, lock, protect, verify)
- :mod:`~cardlib.provision.batch` (:func:`run_batch`, :func:`provision_card`, :class:`PcscCardSource`)
- :mod:`~cardlib.provision.state` (journal, results), :mod:`~cardlib.provision.session`
  (quota grants, signed issuance files), :mod:`~cardlib.provision.password`
See docs/keys-and-provisioning.md.
"""
