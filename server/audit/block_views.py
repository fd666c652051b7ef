"""The card page's block and unblock forms (auditors): a card reported lost, stolen or damaged (server.card_blocks).

Registered on the auditor blueprint (:data:`server.audit.views.bp`): a logged-in auditor with the page's
CSRF token (checked for every POST by :func:`server.audit.views.require_login`). The use case, its
checks and its audit rows are :func:`server.card_blocks.block_card` and :func:`server.card_blocks.unblock_card`.
"""

from __future__ import annotations

from flask import g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from server.audit.views import _path_id, bp
from server.card_blocks import BlockReason, block_card, unblock_card
from server.errors import BadRequest
from server.extensions import db


def _text(name: str) -> str:
    """A form field; a NUL character is refused (PostgreSQL text cannot hold it)."""
    value = request.form.get(name, "")
    if "\x00" in value:
        raise BadRequest(f"the {name} contains a NUL character (U+0000)", field=name)
    return value


@bp.post("/cards/<card_id>/block")
def block(card_id: str) -> ResponseReturnValue:
    """Block the card (form: ``reason`` lost|stolen|damaged, optional ``note``), then show the card page.

    :raises BadRequest: another reason, a malformed card id, a note over 500 characters.
    :raises UnknownCard: nothing is known of the card (404). :raises CardAlreadyBlocked: 409.
    """
    _path_id(card_id, "card")
    try:
        reason = BlockReason(request.form.get("reason", ""))
    except ValueError as exc:
        raise BadRequest(f"reason must be one of {[r.value for r in BlockReason]}", field="reason") from exc
    session = db.write_session()
    block_card(session, card_id, reason, person=g.auditor, note=_text("note"), audit_detail={"via": "audit page"})
    session.commit()
    return redirect(url_for("audit.card_page", card_id=card_id))


@bp.post("/cards/<card_id>/unblock")
def unblock(card_id: str) -> ResponseReturnValue:
    """Lift the card's block (form: ``reason``, required), then show the card page.

    :raises BadRequest: no reason, or one over 500 characters. :raises CardNotBlocked: no block (409).
    """
    _path_id(card_id, "card")
    session = db.write_session()
    unblock_card(session, card_id, person=g.auditor, reason=_text("reason"), audit_detail={"via": "audit page"})
    session.commit()
    return redirect(url_for("audit.card_page", card_id=card_id))
