"""Trust bundle: the newest signed bundle with ETag / If-None-Match (RFC 9110 §8.8.3, §13.1.2)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from cardlib.records.bundle import BundleSignatureError, verify_bundle
from cardlib.records.errors import RecordError
from cardlib.records.statements import FRESHNESS_HEADER, NONCE_HEADER, sign_freshness
from server.auth import audit, require_role
from server.bundles import load_trust_root, newest_stored_bundle, store_bundle
from server.errors import BadRequest, ConfigurationError, InvalidBundle, NaiveDatetimeError, NotFound, clipped
from server.extensions import db
from server.http import json_body
from server.models import PersonRole
from server.receipts import receipt_signer
from server.types import require_aware

bp = Blueprint("bundle", __name__, url_prefix="/api/v1")

BUNDLE_MEDIA_TYPE = "application/cose"


@bp.get("/bundle")
def newest_bundle() -> ResponseReturnValue:
    """The highest-version bundle as opaque signed bytes; 304 if the client's ETag matches."""
    bundle = newest_stored_bundle(db.session)
    if bundle is None:
        raise NotFound("no trust bundle published yet")
    response = Response(bundle.blob, mimetype=BUNDLE_MEDIA_TYPE)
    response.set_etag(bundle.sha256.hex())
    response.headers["Huma-Bundle-Version"] = str(bundle.version)
    response.headers["Huma-Bundle-Expires"] = bundle.expires_at.isoformat()
    response.headers["Cache-Control"] = "no-cache"
    nonce = request.headers.get(NONCE_HEADER)
    if nonce is not None:  # a counter asks: is this still the newest? (docs/security.md "Server answers are signed")
        response.headers[FRESHNESS_HEADER] = _freshness(nonce, bundle.version, bundle.sha256)
    return response.make_conditional(request)


def _freshness(nonce_hex: str, version: int, sha256: bytes) -> str:
    """A signed freshness statement answering the counter's nonce (base64url, no padding).

    :raises BadRequest: the nonce is not 16-32 bytes of hex.
    """
    try:
        nonce = bytes.fromhex(nonce_hex)
        statement = sign_freshness(receipt_signer(current_app), nonce, version, sha256, time.time())
    except ValueError as exc:
        raise BadRequest(f"{NONCE_HEADER} must be 16-32 bytes of hex", field=NONCE_HEADER) from exc
    return base64.urlsafe_b64encode(statement).rstrip(b"=").decode("ascii")


@bp.post("/bundles")
@require_role(PersonRole.ADMIN)
def publish_bundle() -> ResponseReturnValue:
    """Store a signed bundle ``{"blob": base64, "version"?: int, "expires_at"?: ISO 8601}`` (admin, audited).

    The blob is verified first, as counters and the issuance path do
    (:func:`cardlib.records.bundle.verify_bundle` under ``TRUST_ROOT_CERT``): bytes that do
    not verify would be served to every counter and make card-issuance uploads 409 until a
    good bundle is published. Version and expiry are the signed ones: ``version``, if
    given, must equal the blob's; ``expires_at``, if given, must be an aware ISO 8601
    instant but is superseded by the blob's signed expiry (the answer says which is stored).

    :raises BadRequest: blob not base64 or empty; version/expires_at of the wrong form.
    :raises InvalidBundle: 422, ``reason`` ``malformed``, ``signature`` or ``mismatch``.
    :raises ConfigurationError: no ``TRUST_ROOT_CERT``: nothing to verify against, nothing stored.
    :raises Conflict: that version is already stored.
    """
    body = json_body()
    version, expires, blob_b64 = body.get("version"), body.get("expires_at"), body.get("blob")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or not 0 < version < 2**62):
        raise BadRequest("version must be a positive integer", field="version")
    if expires is not None:
        try:
            require_aware(dt.datetime.fromisoformat(expires))
        except NaiveDatetimeError:
            raise
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"expires_at must be ISO 8601 with offset: {clipped(str(exc), 200)}",
                             field="expires_at") from exc
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise BadRequest(f"blob (base64) required: {clipped(str(exc), 200)}", field="blob") from exc
    if not blob:
        raise BadRequest("blob is empty", field="blob")
    root_path = current_app.config.get("TRUST_ROOT_CERT")
    if not root_path:
        raise ConfigurationError("HUMA_TRUST_ROOT_CERT is not configured: cannot verify trust bundles")
    try:
        signed = verify_bundle(blob, load_trust_root(root_path))
    except BundleSignatureError as exc:
        raise InvalidBundle(f"bundle does not verify under TRUST_ROOT_CERT: {clipped(str(exc), 300)}",
                            reason="signature") from exc
    except RecordError as exc:
        raise InvalidBundle(f"not a trust bundle: {clipped(str(exc), 300)}", reason="malformed") from exc
    if version is not None and version != signed.version:
        raise InvalidBundle(f"version {version} given, the signed bundle is version {signed.version}",
                            reason="mismatch", field="version")
    if not 0 < signed.version < 2**62:
        raise InvalidBundle(f"signed bundle version {signed.version} is out of range", reason="malformed")
    try:
        expires_at = dt.datetime.fromtimestamp(signed.expires_at, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidBundle(f"signed expiry {clipped(str(signed.expires_at), 32)} is no date",
                            reason="malformed") from exc
    session = db.write_session()
    bundle = store_bundle(session, signed.version, blob, expires_at)
    audit(session, g.person, "bundle.publish", f"bundle:{signed.version}", sha256=bundle.sha256.hex())
    session.commit()
    return jsonify({"version": signed.version, "sha256": bundle.sha256.hex(),
                    "expires_at": expires_at.isoformat()}), 201
