"""Reconciliation: set-based SQL over the stored journal that turns anomalies into findings.

Public API: :func:`server.reconcile.engine.reconcile`, :func:`server.reconcile.engine.deny_list_candidates`,
:func:`server.reconcile.engine.decide_finding`. Tables: :mod:`server.reconcile.models`.
"""
