"""Trust bundle: the newest signed bundle with ETag / If-None-Match (RFC 9110 §8.8.3, §13.1.2)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib

from flask import Blueprint, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.auth import audit, require_role
from server.errors import BadRequest, Conflict, NaiveDatetimeError, NotFound, clipped
from server.extensions import db
from server.http import json_body
from server.models import Role, TrustBundle
from server.types import require_aware

bp = Blueprint("bundle", __name__, url_prefix="/api/v1")

BUNDLE_MEDIA_TYPE = "application/cose"


def store_bundle(session: Session, version: int, blob: bytes, expires_at: dt.datetime) -> TrustBundle:
    """Add a signed bundle (opaque bytes) as ``version``; GET /bundle serves the highest. Not committed.

    :param expires_at: timezone-aware expiry, stored for the response headers.
    :raises Conflict: ``version`` is already stored.
    """
    bundle = TrustBundle(version=version, blob=blob, sha256=hashlib.sha256(blob).digest(),
                         expires_at=expires_at)
    try:
        with session.begin_nested():
            session.add(bundle)
    except IntegrityError:
        raise Conflict(f"bundle version {version} exists") from None
    return bundle


@bp.get("/bundle")
def newest_bundle() -> ResponseReturnValue:
    """The highest-version bundle as opaque signed bytes; 304 if the client's ETag matches."""
    bundle = db.session.scalars(
        select(TrustBundle).order_by(TrustBundle.version.desc()).limit(1)
    ).one_or_none()
    if bundle is None:
        raise NotFound("no trust bundle published yet")
    response = Response(bundle.blob, mimetype=BUNDLE_MEDIA_TYPE)
    response.set_etag(bundle.sha256.hex())
    response.headers["Huma-Bundle-Version"] = str(bundle.version)
    response.headers["Huma-Bundle-Expires"] = bundle.expires_at.isoformat()
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)


@bp.post("/bundles")
@require_role(Role.ADMIN)
def publish_bundle() -> ResponseReturnValue:
    """Store a signed bundle ``{"version": int, "expires_at": ISO 8601, "blob": base64}`` (admin, audited)."""
    body = json_body()
    version, expires, blob_b64 = body.get("version"), body.get("expires_at"), body.get("blob")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 2**62:
        raise BadRequest("version must be a positive integer", field="version")
    try:
        expires_at = require_aware(dt.datetime.fromisoformat(expires))  # type: ignore[arg-type]
        blob = base64.b64decode(blob_b64, validate=True)  # type: ignore[arg-type]
    except NaiveDatetimeError:
        raise
    except (TypeError, ValueError, binascii.Error) as exc:
        raise BadRequest("expires_at (ISO 8601 with offset) and blob (base64) required: "
                         f"{clipped(str(exc), 200)}") from exc
    if not blob:
        raise BadRequest("blob is empty", field="blob")
    session = db.write_session()
    bundle = store_bundle(session, version, blob, expires_at)
    audit(session, g.person, "bundle.publish", f"bundle:{version}", sha256=bundle.sha256.hex())
    session.commit()
    return jsonify({"version": version, "sha256": bundle.sha256.hex(),
                    "expires_at": expires_at.isoformat()}), 201
