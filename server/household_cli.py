"""``huma server household|cards|grievance|receipt``: technician and auditor tools on the server host (issue 18).

Run where the database is (like ``huma server people``): no login, no base64, no curl. Every
change is audited as a console change (``via: cli``).

- ``household show REF`` — cards and their blocks, remaining entitlement this cycle, last taps (``--json``: the
  API's household, without blocks);
- ``household statement REF --reissue-of CARD --out FILE [--key-out PEM]`` — the signed
  balance statement ``huma provision card --balance-statement`` takes, and the server key;
- ``cards upload-issuance FILE --technician USERNAME`` — register a station's issuance file;
- ``cards upload-pin-resets FILE --technician USERNAME`` — store a station's signed office PIN resets;
- ``grievance add|list|status`` and ``receipt CODE``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from cardlib.clitypes import count_noun
from server.cli import _console, _remember_database, _write_session, console_time, database, make_app
from server.errors import BadRequest, NotFound

__all__ = ["cards_group", "grievance_group", "household_group", "receipt_cmd"]

_REF = click.Path(dir_okay=False, path_type=Path)
#: ``--database`` as on every ``huma server`` command (server.cli.DATABASE_OPTION, whose type mypy
#: cannot infer through this module's import cycle with server.cli).
DATABASE_OPTION = click.option(
    "--database", metavar="URL", envvar="DATABASE_URL", show_envvar=True, expose_value=False,
    callback=_remember_database, is_eager=True,
    help="Database: postgresql+psycopg://user@host:5432/name or sqlite:///path.db "
         "(default: $DATABASE_URL, else instance/huma.db beside the server package).")


#: Units whose English noun takes an ``s`` for any count but one (a rupiah amount does not).
_COUNTED_UNITS = ("package", "visit")


def decline_words(code: str) -> str:
    """A decline reason code (:class:`cardlib.records.declines.DeclineReason` value) in the audit pages'
    English words: ``supervisor_refused`` → ``supervisor refused (wrong id or password)``; an unknown code as given."""
    from server.audit.i18n import translations

    return translations("en").gettext(code)


def entitlement_text(n: int, unit: str | None) -> str:
    """``n`` units as ``household show`` prints an entitlement: ``"1 package"``, ``"4 visits"``, ``"250000 rupiah"``.

    :param unit: the programme's unit as stored (``package``, ``visit``, ``rupiah``), or None (a bare count).
    """
    if unit in _COUNTED_UNITS:
        return count_noun(n, unit, unit + "s")
    return f"{n} {unit or ''}".rstrip()


@click.group("household")
def household_group() -> None:
    """Households: what the server knows, and the balance a re-issued card takes."""


@household_group.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of text.")
@DATABASE_OPTION
def show_household(ref: str, as_json: bool) -> None:
    """Cards (and the office's blocks of cards reported lost), remaining entitlement this cycle per programme,
    and last taps of household REF.

    REF: the reference (16 hex digits) or the label printed on cards and letters (HB-XXXXXXXX).
    """
    from cardlib.records.household_label import parse_household_id
    from server.blueprints.households import household_json
    from server.card_blocks import blocks_of
    from server.extensions import db
    from server.household_ids import resolve_household
    from server.households import household
    from server.types import utcnow

    parse_household_id(ref)  # a malformed REF fails here, before the database is opened
    app = make_app()
    with database(app):
        ref = resolve_household(db.session, ref)
        h = household(db.session, ref, utcnow(), late_after_s=float(app.config["ISSUANCE_LATE_AFTER"]))
        blocks = blocks_of(db.session, [str(c["card_id"]) for c in h.cards]) if h is not None else {}
    if h is None:
        raise NotFound(f"no registered card serves household {ref}")
    if as_json:
        click.echo(json.dumps(household_json(h), indent=2))
        return
    click.echo(f"household {ref}, cycle {h.cycle} (times WIB, as on the audit pages)")
    for c in h.cards:
        revoked = f", revoked {console_time(c['revoked_at'])} ({c['revoke_reason']})" if c["revoked_at"] else ""
        received = f", received {console_time(c['received_at'])}" if c["received_at"] else ""
        if c["received_late"]:  # backdated, or a file kept back: docs/security.md
            issued, arrived = (dt.datetime.fromisoformat(str(c[k])) for k in ("issued_at", "received_at"))
            days = (arrived - issued).days
            received += f" (LATE: {days} days after its issuance date)"
        click.echo(f"  card {c['card_id']} issued {console_time(c['issued_at'])}{received}{revoked}")
    for card_id, blk in sorted(blocks.items()):  # counters decline it card_denied from the next bundle they fetch
        click.echo(f"  card {card_id} blocked: {blk.reason}, by {blk.blocked_by} ({blk.blocked_by_role}), "
                   f"{console_time(blk.blocked_at)}{' · ' + blk.note if blk.note else ''}")
    for b in h.balances:
        click.echo(f"  {b.programme}: {b.remaining} of {entitlement_text(b.entitled, b.unit)} left "
                   f"({b.redeemed} redeemed)")
    for t in h.last_taps:
        words = [console_time(str(t["wall_time"])), str(t["terminal_id"]), f"#{t['seq']}", f"card {t['card_id']}",
                 str(t["kind"]), str(t["programme"] or ""), "" if t["amount"] is None else str(t["amount"])]
        reason = f": {decline_words(str(t['decline_reason']))}" if t.get("decline_reason") else ""
        click.echo("  " + " ".join(w for w in words if w) + reason)


@household_group.command("statement")
@click.argument("ref")
@click.option("--reissue-of", required=True, help="The lost card's id (16 hex) the new card replaces.")
@click.option("--out", type=_REF, required=True, help="Where to write the statement (COSE_Sign1 bytes).")
@click.option("--key-out", type=_REF, default=None, help="Also write the server key's public PEM here.")
@DATABASE_OPTION
def statement_cmd(ref: str, reissue_of: str, out: Path, key_out: Path | None) -> None:
    """Sign household REF's remaining entitlement for re-issuing card --reissue-of (audited).

    REF: the reference (16 hex digits) or the label printed on cards and letters (HB-XXXXXXXX).

    Signed with the server receipt key the counters pinned: set HUMA_RECEIPT_KEY to the server's
    key file (and HUMA_RECEIPT_KEY_PASSWORD if it is encrypted); without it, or if the file is
    missing, the command refuses and makes no key.
    """
    from cardlib.records.household_label import parse_household_id
    from server.auth import audit
    from server.household_ids import resolve_household
    from server.households import HOUSEHOLD_REF, balance_statement
    from server.receipts import cli_receipt_signer, public_pem
    from server.types import utcnow

    parse_household_id(ref)  # a malformed REF fails here, before the key and the database
    if not HOUSEHOLD_REF.fullmatch(reissue_of):
        raise click.BadParameter("16 lower-case hex digits", param_hint="--reissue-of")
    app = make_app()
    signer = cli_receipt_signer(app, "the balance statement")  # the key counters pinned, never a new one
    with database(app):
        session = _write_session()
        ref = resolve_household(session, ref)
        try:
            h, message = balance_statement(session, signer, ref, reissue_of, utcnow())
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        remaining = {str(b.programme_id): b.remaining for b in h.balances}
        audit(session, None, "households.balance_statement", f"household:{ref}", reissue_of=reissue_of,
              cycle=h.cycle, remaining=remaining, **_console())
        session.commit()
        pem = public_pem(signer)
    out.write_bytes(message)
    if key_out is not None:
        key_out.write_text(pem, encoding="ascii")
    click.echo(f"household {ref}, cycle {h.cycle}: " + ", ".join(
        f"{b.programme} (programme {b.programme_id}) {b.remaining} left" for b in h.balances))
    click.echo(f"statement for re-issuing {reissue_of} written to {out}")


@click.group("cards")
def cards_group() -> None:
    """The card registry."""


@cards_group.command("upload-issuance")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--technician", required=True, help="Username of the technician who made the cards (a person).")
@DATABASE_OPTION
def upload_issuance(file: Path, technician: str) -> None:
    """Register a provisioning station's signed issuance file (issuances.cose) as POST /api/v1/cards/issuances."""
    from sqlalchemy import func, select

    from server.auth import audit
    from server.bundles import load_trust_root, newest_verified_bundle
    from server.errors import ConfigurationError
    from server.models import Person, PersonRole
    from server.registry import register_issuance_file

    message = file.read_bytes()
    app = make_app()
    root_path = app.config.get("TRUST_ROOT_CERT")
    if not root_path:
        raise ConfigurationError("HUMA_TRUST_ROOT_CERT is not configured: cannot verify issuance files; set it to "
                                 "the path of the root certificate, KS/certs/<root kid>.crt.pem of the key store "
                                 "(docs/operations.md)")
    with database(app):
        session = _write_session()
        person = session.scalars(select(Person).where(func.lower(Person.username) == technician.lower())).first()
        if person is None or person.role not in (PersonRole.TECHNICIAN, PersonRole.ADMIN):
            raise click.BadParameter(f"no technician or admin named {technician!r}", param_hint="--technician")
        bundle = newest_verified_bundle(session, load_trust_root(root_path))
        f, results = register_issuance_file(session, message, bundle, person.id)
        additions = [c.hex() for c in f.deny_list_additions()]
        audit(session, person, "cards.issuance_file", f"session:{f.session_id.hex()}", technician=f.technician,
              technician_kid=f.technician_kid.hex(),
              card_ids=[r.card_id for r in results if r.result.value == "accepted"],
              conflicts=[r.card_id for r in results if r.result.value == "conflict"], deny_candidates=additions,
              **_console())
        session.commit()
    for r in results:
        click.echo(f"{r.card_id} {r.result.value}")
    pending = [c for c in additions if bytes.fromhex(c) not in bundle.deny_cards]  # the newest bundle denies the rest
    if pending:
        click.echo("deny-list candidates for the next bundle: " + " ".join(pending))


@cards_group.command("upload-pin-resets")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--technician", required=True, help="Username of the person handing in the file (technician, admin).")
@click.option("--unsigned-legacy", is_flag=True, default=False,
              help="Take an unsigned pin-resets.jsonl (a station before signed resets): its resets are stored "
                   "without a signer and marked unsigned on the card page.")
@DATABASE_OPTION
def upload_pin_resets(file: Path, technician: str, unsigned_legacy: bool) -> None:
    """Store a station's office PIN resets (pin-resets.cose from huma provision pin-reset); audited.

    Each record must be signed by a technician key of the newest verified trust bundle (as
    issuance files); one forged or altered record refuses the whole file. Each reset is stored
    once (the same file may be handed in again after each office day) with its signer's key id
    and shown on the auditor's card page. An old station's unsigned pin-resets.jsonl is taken
    only with --unsigned-legacy.
    """
    from sqlalchemy import func, select

    from cardlib.records.bundle import KeyRole
    from server.auth import audit
    from server.bundles import load_trust_root, newest_verified_bundle
    from server.errors import ConfigurationError
    from server.models import Person, PersonRole
    from server.pin_resets import FLAGS, card_pin_resets, is_signed_pin_reset_file, register_pin_resets
    from server.types import utcnow

    data = file.read_bytes()
    app = make_app()
    root_path = app.config.get("TRUST_ROOT_CERT")
    signed = is_signed_pin_reset_file(data)
    if signed and not root_path:
        raise ConfigurationError("HUMA_TRUST_ROOT_CERT is not configured: cannot verify PIN-reset files; set it to "
                                 "the path of the root certificate, KS/certs/<root kid>.crt.pem of the key store "
                                 "(docs/operations.md)")
    with database(app):
        session = _write_session()
        person = session.scalars(select(Person).where(func.lower(Person.username) == technician.lower())).first()
        if person is None or person.role not in (PersonRole.TECHNICIAN, PersonRole.ADMIN):
            raise click.BadParameter(f"no technician or admin named {technician!r}", param_hint="--technician")
        keys = (newest_verified_bundle(session, load_trust_root(root_path)).resolver(KeyRole.TECHNICIAN)
                if signed and root_path else None)
        result = register_pin_resets(session, data, person.id, utcnow(), technician_keys=keys,
                                     unsigned_legacy=unsigned_legacy)
        audit(session, person, "cards.pin_resets", f"file:{file.name}", stored=len(result.stored),
              known=result.known, now_signed=result.now_signed, signed=signed,
              signer_kids=sorted({r.signer_kid for r in result.stored if r.signer_kid}),
              card_ids=sorted({r.card_id for r in result.stored}), **_console())
        flagged = [(r, flags) for card in sorted({r.card_id for r in result.stored})
                   for r, flags in card_pin_resets(session, card) if flags and r in result.stored]
        session.commit()
        click.echo(f"{len(result.stored)} PIN reset(s) stored, {result.known} already known"
                   + (f" ({result.now_signed} of them now signed)" if result.now_signed else "")
                   + ("" if signed or not result.stored else "; unsigned (--unsigned-legacy)"))
        for r, flags in flagged:
            click.echo(f"card {r.card_id} reset {console_time(r.reset_at)} by {r.technician}: "
                       + "; ".join(FLAGS[f] for f in flags))


@click.group("grievance")
def grievance_group() -> None:
    """Complaints linked to a receipt code, card or household, worked through by auditors."""


@grievance_group.command("add")
@click.option("--text", required=True, help="What the beneficiary says.")
@click.option("--receipt-code", default=None, help="XXXX-XXXX as the counter showed it.")
@click.option("--card", "card_id", default=None, help="Card id (16 hex).")
@click.option("--household", "household_ref", default=None,
              help="Household: the reference (16 hex) or the label printed on cards and letters (HB-XXXXXXXX).")
@DATABASE_OPTION
def grievance_add(text: str, receipt_code: str | None, card_id: str | None, household_ref: str | None) -> None:
    """Record a complaint (open; audited)."""
    from cardlib.records.household_label import parse_household_id
    from server.grievances import GrievanceError, record_grievance
    from server.household_ids import resolve_household

    if household_ref is not None:
        parse_household_id(household_ref)  # a malformed --household fails before the database is opened
    app = make_app()
    with database(app):
        session = _write_session()
        if household_ref is not None:
            household_ref = resolve_household(session, household_ref)
        try:
            g = record_grievance(session, None, text, receipt_code=receipt_code, card_id=card_id,
                                 household_ref=household_ref)
        except GrievanceError as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{(exc.field or 'text').replace('_', '-')}") from None
        session.commit()
        click.echo(f"grievance {g.id} recorded (open)")


@grievance_group.command("list")
@click.option("--status", type=click.Choice(["open", "investigating", "resolved"]), default=None,
              help="Only complaints in this status (default: all).")
@DATABASE_OPTION
def grievance_list(status: str | None) -> None:
    """Complaints, oldest first."""
    from sqlalchemy import select

    from server.extensions import db
    from server.grievances import Grievance

    app = make_app()
    with database(app):
        stmt = select(Grievance).order_by(Grievance.id)
        if status:
            stmt = stmt.where(Grievance.status == status)
        for g in db.session.scalars(stmt):
            about = " ".join(f"{k}={v}" for k, v in (("receipt", g.receipt_code), ("card", g.card_id),
                                                     ("household", g.household_ref)) if v)
            click.echo(f"{g.id} {g.status} {console_time(g.created_at)} {about}: {g.text[:80]}")


@grievance_group.command("status")
@click.argument("grievance_id", type=int)
@click.argument("status", type=click.Choice(["open", "investigating", "resolved"]))
@click.option("--reason", required=True, help="Why (kept on the complaint and in the audit log).")
@DATABASE_OPTION
def grievance_status(grievance_id: int, status: str, reason: str) -> None:
    """Move complaint GRIEVANCE_ID to STATUS (audited)."""
    from server.grievances import GrievanceError, GrievanceStatus, change_status

    app = make_app()
    with database(app):
        session = _write_session()
        try:
            g = change_status(session, grievance_id, None, GrievanceStatus(status), reason)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except GrievanceError as exc:
            raise BadRequest(str(exc)) from None
        session.commit()
        click.echo(f"grievance {g.id}: {g.status}")


@click.command("receipt")
@click.argument("code")
@DATABASE_OPTION
def receipt_cmd(code: str) -> None:
    """The redemption(s) a receipt code XXXX-XXXX names, and for a fallback its step and who approved it (audited)."""
    from server.auth import audit
    from server.grievances import GrievanceError, receipt_entries

    app = make_app()
    with database(app):
        session = _write_session()
        try:
            entries = receipt_entries(session, code)
        except GrievanceError as exc:
            raise click.BadParameter(str(exc), param_hint="CODE") from None
        if entries:
            audit(session, None, "receipts.lookup", f"receipt:{entries[0]['receipt_code']}", matches=len(entries),
                  **_console())
        session.commit()
    if not entries:
        raise NotFound("no redemption with this receipt code")
    for e in entries:
        how = f" · fallback {e['fallback']} approved by {e['approved_by'] or '?'}" if e["fallback"] else ""
        click.echo(f"{console_time(e['wall_time'])} {e['terminal_id']} #{e['seq']} card {e['card_id']} household "
                   f"{e['household_ref'] or '?'} {e['programme']} {e['amount']}{how}")
