"""server: the centre (terminal enrolment, journal upload, trust bundle, people).

``create_app`` is the Flask application factory; models and upload logic live
in modules free of Flask imports (:mod:`server.models`, :mod:`server.upload`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

#: Defaults; override with ``HUMA_<KEY>`` environment variables or ``test_config``.
DEFAULTS: dict[str, Any] = {
    "DB_BUSY_TIMEOUT": 5.0,  # seconds a writer waits for a lock before 503
    "DB_POOL_SIZE": 10,
    "RETRY_AFTER": 2,  # seconds, Retry-After of a 503
    "MAX_CONTENT_LENGTH": 4 * 1024 * 1024,  # bytes per request
    "MAX_BATCH_ENTRIES": 2000,  # journal entries per upload
    "RECONCILE_AFTER_UPLOAD": False,  # an incremental reconciliation after each upload (server/reconcile_trigger.py)
    "TOKEN_TTL": 12 * 3600,  # seconds a login token lives
    "TERMINAL_CA_KEY": None,  # path of the terminal CA PKCS#8 PEM key
    "TERMINAL_CA_KEY_PASSWORD": None,
    "TERMINAL_CA_CERT": None,
    "TRUST_ROOT_CERT": None,  # root certificate/public key PEM; verifies stored bundles (card registry)
    # Logins (server/logins.py, docs/security.md "Logins and web"):
    "LOGIN_FREE_FAILURES": 3,  # failures of an account before back-off (1, 2, 4... s)
    "LOGIN_LOCKOUT_FAILURES": 10,  # failures of an account that lock it (N)
    "LOGIN_WINDOW": 900,  # seconds without a failure after which a count restarts
    "LOGIN_LOCKOUT": 900,  # seconds an account stays locked (an admin can unlock earlier)
    "LOGIN_ADDRESS_FREE_FAILURES": 20,  # failures from one client address before back-off
    "LOGIN_BACKOFF_MAX": 60,  # seconds, longest back-off
    "LOGIN_HASH_CONCURRENCY": None,  # password hashes at once per process; None: CPU cores
    "LOGIN_HASH_WAIT": 2.0,  # seconds a login waits for a hashing slot before 503
    "ENROL_CODE_TTL": 7 * 86400,  # seconds an enrolment code stays valid
    "ISSUANCE_LATE_AFTER": 7 * 86400,  # seconds; an issuance file arriving later than this after issued_at is flagged
    "ENROL_FREE_FAILURES": 10,  # failed enrolments from one address before back-off (1, 2, 4... s)
    "ENROL_WINDOW": 3600,  # seconds without a failed enrolment after which an address is forgiven
    "ENROL_BACKOFF_MAX": 300,  # seconds, longest enrolment back-off
    # Web (docs/operations.md "Behind a TLS proxy"):
    "TRUSTED_PROXIES": 0,  # reverse proxies in front whose X-Forwarded-For/-Proto/-Host are believed
    "HSTS_MAX_AGE": 31536000,  # seconds, Strict-Transport-Security on https answers; 0: none
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the application.

    Configuration order: :data:`DEFAULTS`, ``HUMA_*`` environment variables,
    ``DATABASE_URL`` (environment), then ``test_config``. Without a database URL
    the SQLite file ``<instance>/huma.db`` is used.
    """
    from server.blueprints import bundle, enrol, journal, openapi, people
    from server.extensions import db
    from server.http import register_error_handlers
    from server.web import init_web

    app = Flask(__name__, instance_relative_config=True)
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env("HUMA")
    if os.environ.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    if test_config is not None:
        app.config.update(test_config)
    if not app.config.get("DATABASE_URL"):  # the directory is made by `huma server db upgrade`, not here
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "huma.db")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    db.init_app(app)
    init_web(app)  # trusted proxies, HSTS, no-store, nosniff (server/web.py); its headers go on last
    register_error_handlers(app)
    for module in (people, enrol, journal, bundle, openapi):
        app.register_blueprint(module.bp)
    from server.audit.views import bp as audit_bp  # auditor view (/audit), see server/audit

    app.register_blueprint(audit_bp)
    from server.checkpoints.views import bp as checkpoints_bp  # scanned shift checkpoints (issue 19)

    app.register_blueprint(checkpoints_bp)
    from server.dashboard.views import bp as dashboard_bp  # programme dashboard (/audit/programme)

    app.register_blueprint(dashboard_bp)
    from server.blueprints import grievances, households  # households and grievances (issue 18)

    app.register_blueprint(households.bp)
    app.register_blueprint(grievances.bp)
    from server.blueprints import settlements  # settled torn writes, read-only (auditor, admin)

    app.register_blueprint(settlements.bp)
    return app
