"""Grievances (issue 18): complaints about a receipt, card or household, worked through by auditors."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("grievances", __name__, url_prefix="/api/v1")
