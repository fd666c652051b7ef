"""Reconciliation: set-based SQL over the stored journal that turns anomalies into findings.

Public API: :func:`server.reconcile.engine.reconcile` (a run), :func:`server.reconcile.findings.decide_finding`
(an auditor's decision), :func:`server.reconcile.denylist.deny_list_candidates`. Tables: :mod:`server.reconcile.models`.
"""
