"""Load, validate and type reader and terminal profiles (TOML files).

Pipeline: read UTF-8 text → :func:`tomllib.loads` (TOML 1.0; syntax errors keep
tomllib's line) → tell reader from terminal profile (``kind`` key, else by
content) → JSON Schema (:mod:`firmware_config.schema`) → cross-key rules →
typed dataclasses (:mod:`firmware_config.models`). Every problem becomes a
:class:`~firmware_config.errors.ConfigIssue` naming file, key and line, and all
of a file's problems are raised together.

Bounded: at most :data:`MAX_PROFILE_BYTES` + 1 bytes are read (profiles are a few KiB); a
larger file or an endless one (``/dev/zero``, a pipe) is refused with :class:`ConfigTooLarge`
without reading the rest. The size is counted while reading, not taken from ``stat``,
because device nodes and pipes report 0.

Tolerated: a UTF-8 byte-order mark at the start of the file (Windows editors write one;
it is dropped and logged at INFO). Refused: ``nan`` and ``inf`` wherever a number is read
(:func:`_non_finite`), because JSON Schema range checks cannot catch NaN.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema

from firmware_config import schema as _schema
from firmware_config.errors import (
    ConfigIssue,
    ConfigNotFound,
    ConfigSchemaError,
    ConfigSyntaxError,
    ConfigTooLarge,
)
from firmware_config.models import (
    BuzzerOnDetect,
    CounterMode,
    Feedback,
    FeedbackChannel,
    Language,
    PassThrough,
    PolicyOverrides,
    ReaderBinding,
    ReaderProfile,
    SerialSettings,
    Stack,
    TerminalKeyStore,
    TerminalProfile,
)
from firmware_config.stacks import nfcpy_path_problem, serial_device_problem
from firmware_config.toml_lines import KeyPath, key_lines, line_of

PACKAGE_DIR: Final = Path(__file__).resolve().parent
#: Reader profiles shipped with the package.
SHIPPED_READERS_DIR: Final = PACKAGE_DIR / "readers"
#: Example terminal profiles shipped with the package.
SHIPPED_TERMINALS_DIR: Final = PACKAGE_DIR / "terminals"

#: Smallest command APDU: CLA INS P1 P2 (ISO/IEC 7816-4 §5.1, case 1).
_MIN_APDU_LEN: Final = 4

#: Largest profile file read, bytes. The shipped profiles are about 1 KiB; 1 MiB leaves room
#: for any real profile and keeps a mistaken argument (a log, /dev/zero) from filling memory.
MAX_PROFILE_BYTES: Final = 1024 * 1024

_TOML_POS_RE: Final = re.compile(r"\(at line (\d+), column (\d+)\)")
_BOM: Final = "\ufeff"

_log = logging.getLogger(__name__)


class ProfileKind(enum.StrEnum):
    """The two kinds of profile file."""

    READER = "reader"
    TERMINAL = "terminal"


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=("regex",))

    @checker.checks("hex-bytes")
    def _is_hex_bytes(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_schema.HEX_BYTES_RE.match(instance))

    return checker


_VALIDATORS: Final = {
    ProfileKind.READER: jsonschema.Draft202012Validator(_schema.READER_SCHEMA, format_checker=_format_checker()),
    ProfileKind.TERMINAL: jsonschema.Draft202012Validator(_schema.TERMINAL_SCHEMA, format_checker=_format_checker()),
}


def format_key(path: Sequence[str | int]) -> str:
    """Render a key path for humans: ``("readers", 1, "profile")`` -> ``readers[1].profile``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Doc:
    """A parsed profile: file, text, TOML document and key lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_PROFILE_BYTES + 1)
        except FileNotFoundError as exc:
            raise ConfigNotFound(f"{path}: no such profile file") from exc
        except OSError as exc:
            raise ConfigNotFound(f"{path}: cannot read profile file: {exc.strerror}") from exc
        if len(raw) > MAX_PROFILE_BYTES:
            raise ConfigTooLarge([ConfigIssue(
                path, None, "",
                f"larger than {MAX_PROFILE_BYTES / 2**20:g} MiB; a profile is a few KiB (is this the right file?)",
            )])
        try:
            self.text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_line = raw[: exc.start].count(b"\n") + 1
            issue = ConfigIssue(path, bad_line, "", "not UTF-8 text (TOML 1.0 requires UTF-8)")
            raise ConfigSyntaxError([issue]) from exc
        #: True when the file started with a UTF-8 byte-order mark (Windows editors write one).
        #: TOML 1.0 does not allow it and tomllib refuses it; we drop it (lines are unchanged).
        self.had_bom = self.text.startswith(_BOM)
        if self.had_bom:
            _log.info("%s: ignoring the UTF-8 byte-order mark at the start of the file", path)
            self.text = self.text[len(_BOM):]
        try:
            self.data: dict[str, Any] = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            match = _TOML_POS_RE.search(str(exc))
            line: int | None = int(match.group(1)) if match else None
            if match is None and "end of document" in str(exc):
                line = self.text.count("\n") + 1
            message = _TOML_POS_RE.sub("", str(exc)).strip()
            if match:
                message += f" (column {match.group(2)})"
            raise ConfigSyntaxError([ConfigIssue(path, line, "", f"TOML syntax error: {message}")]) from exc
        self.lines = key_lines(self.text)

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.path, line_of(self.lines, path), format_key(path), message)

    def kind(self) -> ProfileKind:
        declared = self.data.get("kind")
        if declared in (ProfileKind.READER, ProfileKind.TERMINAL):
            return ProfileKind(declared)
        if declared is not None:
            raise ConfigSchemaError(
                [self.issue(("kind",), f"{declared!r} is not one of 'reader', 'terminal'")]
            )
        if "terminal_id" in self.data or "readers" in self.data:
            return ProfileKind.TERMINAL
        if "stack" in self.data or "name_pattern" in self.data:
            return ProfileKind.READER
        raise ConfigSchemaError(
            [ConfigIssue(self.path, 1, "kind", "cannot tell a reader from a terminal profile: "
                                               'add kind = "reader" or kind = "terminal"')]
        )


def _describe(value: object) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


_TYPE_NAMES: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "an array",
    "object": "a table",
}


def _non_finite(value: object, path: KeyPath) -> Iterable[tuple[KeyPath, float]]:
    """Every float in a TOML document that is NaN or ±inf (TOML 1.0 allows ``nan``/``inf``),
    with its key path. JSON Schema's ``minimum``/``maximum`` let NaN through."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))


def _schema_issues(doc: _Doc, kind: ProfileKind) -> list[ConfigIssue]:
    """Turn every JSON Schema violation into one or more issues with key and line."""
    issues: list[ConfigIssue] = []
    non_finite = dict(_non_finite(doc.data, ()))
    for where, value in non_finite.items():
        issues.append(doc.issue(where, f"must be a finite number, not {value!r}"))
    errors = list(_VALIDATORS[kind].iter_errors(doc.data))
    # A value of the wrong type also fails its range/length checks: report the type only.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    # jsonschema yields one "required" error per missing key, each carrying the whole
    # required list; listing the missing keys from the instance once per table (and the
    # unknown keys likewise) keeps every problem to one line.
    expanded: set[tuple[str, KeyPath]] = set()
    for error in errors:
        path: KeyPath = tuple(error.absolute_path)
        if path in non_finite or (path in mistyped and error.validator != "type"):
            continue
        sub = error.schema if isinstance(error.schema, dict) else {}
        if error.validator in ("required", "additionalProperties"):
            if (error.validator, path) in expanded:
                continue
            expanded.add((error.validator, path))
        if error.validator == "required":
            present = error.instance if isinstance(error.instance, dict) else {}
            for name in error.validator_value:
                if name not in present:
                    issues.append(doc.issue((*path, name), "required key is missing"))
            continue
        if error.validator == "additionalProperties":
            allowed = sorted(sub.get("properties", {}))
            for name in sorted(set(error.instance) - set(allowed)):
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
                issues.append(doc.issue((*path, name), f"unknown key{hint}"))
            continue
        if error.validator == "type":
            wanted = error.validator_value
            wanted_text = " or ".join(_TYPE_NAMES.get(t, t) for t in (wanted if isinstance(wanted, list) else [wanted]))
            message = f"must be {wanted_text}, not {_describe(error.instance)}"
        elif error.validator == "enum":
            options = ", ".join(repr(o) for o in error.validator_value)
            message = f"{_describe(error.instance)} is not one of {options}"
        elif error.validator == "const":
            message = f"must be {error.validator_value!r}, not {_describe(error.instance)}"
        elif error.validator == "format" and error.validator_value == "hex-bytes":
            message = (f"{error.instance!r} is not hex bytes (pairs of hex digits, optionally space-separated, "
                       "e.g. 'FF 00 52 00 00')")
        elif error.validator == "format" and error.validator_value == "regex":
            reason = f": {error.cause}" if error.cause is not None else ""
            message = f"{error.instance!r} is not a valid regular expression{reason}"
        elif error.validator == "pattern" and "description" in sub:
            message = f"{error.instance!r} is not {sub['description']}"
        else:
            message = error.message
        issues.append(doc.issue(path, message))
    return issues


def _raise_issues(issues: list[ConfigIssue]) -> None:
    """Raise :class:`ConfigSchemaError` with each distinct issue once, in line order (no-op if none)."""
    if issues:
        raise ConfigSchemaError(sorted(set(issues), key=lambda i: (i.line or 0, i.key, i.message)))


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


def _reader_rules(doc: _Doc) -> list[ConfigIssue]:
    """Rules between keys of a schema-valid reader profile."""
    d = doc.data
    issues: list[ConfigIssue] = []
    stack = Stack(d["stack"])
    has_serial, has_nfcpy = "serial" in d, "nfcpy" in d
    if stack is Stack.NFCPY:
        if d["pass_through"] != PassThrough.NATIVE:
            issues.append(doc.issue(("pass_through",), 'an nfcpy reader exchanges raw frames itself: must be "native"'))
        if has_serial == has_nfcpy:
            issues.append(doc.issue(("stack",), "an nfcpy reader needs exactly one of [serial] or [nfcpy] path"))
        issues.extend(_nfcpy_device_issues(doc))
    else:
        if d["pass_through"] == PassThrough.NATIVE:
            issues.append(doc.issue(("pass_through",),
                                    '"native" is for nfcpy readers; use "acr122u", "part3" or "none"'))
        for table in ("serial", "nfcpy"):
            if table in d:
                issues.append(doc.issue((table,), f"[{table}] applies only to stack = \"nfcpy\""))
    feedback = d["feedback"]
    channel = FeedbackChannel(feedback["channel"])
    if channel is FeedbackChannel.ESCAPE and "escape_control_code" not in d:
        issues.append(doc.issue(("escape_control_code",), 'required key is missing (feedback.channel = "escape")'))
    for event in ("success", "decline", "busy"):
        commands = feedback.get(event)
        if channel is FeedbackChannel.NONE:
            if commands:
                issues.append(doc.issue(("feedback", event), 'commands given but feedback.channel = "none"'))
            continue
        if not commands:
            issues.append(doc.issue(("feedback", event),
                                    f"required (at least one command) for channel {channel.value!r}"))
            continue
        if channel is FeedbackChannel.APDU:
            for index, command in enumerate(commands):
                if len(_hex(command)) < _MIN_APDU_LEN:
                    issues.append(doc.issue(("feedback", event, index),
                                            "a command APDU needs at least 4 bytes (CLA INS P1 P2)"))
    return issues


def _nfcpy_device_issues(doc: _Doc) -> list[ConfigIssue]:
    """An nfcpy reader the counter could never open or signal on (:mod:`firmware_config.stacks`)."""
    d = doc.data
    issues: list[ConfigIssue] = []
    serial = d.get("serial")
    if serial is not None:
        problem = serial_device_problem(serial["device"], serial["baud"])
        if problem is not None:
            key = "device" if problem.startswith(repr(serial["device"])) else "baud"
            issues.append(doc.issue(("serial", key), problem))
    if "nfcpy" in d:
        problem = nfcpy_path_problem(d["nfcpy"]["path"])
        if problem is not None:
            issues.append(doc.issue(("nfcpy", "path"), problem))
    if d["feedback"]["channel"] != FeedbackChannel.NONE:
        issues.append(doc.issue(("feedback", "channel"),
                                'nfcpy carries no LED/buzzer commands to a reader: must be "none"'))
    for key in ("buzzer_on_detect", "escape_control_code"):
        if key in d:
            issues.append(doc.issue((key,), "applies only to PC/SC readers (stack = \"pcsc\")"))
    return issues


def _build_reader(doc: _Doc) -> ReaderProfile:
    d = doc.data
    fb = d["feedback"]
    buzzer = d.get("buzzer_on_detect")
    serial = d.get("serial")
    return ReaderProfile(
        name=d["name"],
        description=d.get("description", ""),
        stack=Stack(d["stack"]),
        name_pattern=re.compile(d["name_pattern"]),
        pass_through=PassThrough(d["pass_through"]),
        max_frame=d["max_frame"],
        poll_interval=float(d["poll_interval"]),
        feedback=Feedback(
            channel=FeedbackChannel(fb["channel"]),
            success=tuple(_hex(c) for c in fb.get("success", ())),
            decline=tuple(_hex(c) for c in fb.get("decline", ())),
            busy=tuple(_hex(c) for c in fb.get("busy", ())),
        ),
        buzzer_on_detect=None
        if buzzer is None
        else BuzzerOnDetect(
            enabled=buzzer["enabled"],
            set_off=_hex(buzzer["set_off"]) if "set_off" in buzzer else None,
            set_on=_hex(buzzer["set_on"]) if "set_on" in buzzer else None,
        ),
        escape_control_code=d.get("escape_control_code"),
        serial=None
        if serial is None
        else SerialSettings(device=serial["device"], baud=serial["baud"], driver=serial.get("driver", "pn532")),
        nfcpy_path=d["nfcpy"]["path"] if "nfcpy" in d else None,
        source=doc.path,
    )


def _validate(doc: _Doc, kind: ProfileKind) -> None:
    issues = _schema_issues(doc, kind)
    if not issues:
        issues = _reader_rules(doc) if kind is ProfileKind.READER else _terminal_rules(doc)
    _raise_issues(issues)


def load_reader_profile(path: str | Path) -> ReaderProfile:
    """Load and validate one reader profile.

    :param path: a reader profile TOML file.
    :returns: the typed profile.
    :raises ConfigNotFound: the file does not exist or cannot be read.
    :raises ConfigSyntaxError: not UTF-8 or not TOML 1.0.
    :raises ConfigSchemaError: a terminal profile, or the profile breaks the schema.
    """
    doc = _Doc(Path(path))
    kind = doc.kind()
    if kind is not ProfileKind.READER:
        raise ConfigSchemaError(
            [ConfigIssue(doc.path, 1, "kind", "this is a terminal profile, a reader profile was expected")])
    _validate(doc, kind)
    return _build_reader(doc)


def reader_profile_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The directories searched for reader profiles: ``extra`` first, then the shipped ones."""
    return [Path(p) for p in extra] + [SHIPPED_READERS_DIR]


def find_reader_profile(name: str, dirs: Iterable[str | Path] = ()) -> ReaderProfile:
    """Load the reader profile called ``name`` (file ``<name>.toml``) from the first directory that has it.

    :param name: the profile name, e.g. ``acr122u``.
    :param dirs: extra directories searched before the shipped profiles.
    :raises ConfigNotFound: no directory has ``<name>.toml``.
    :raises ConfigInvalid: the file is invalid (see :func:`load_reader_profile`).
    """
    searched = reader_profile_dirs(dirs)
    for directory in searched:
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return load_reader_profile(candidate)
    raise ConfigNotFound(f"no reader profile {name!r} in {', '.join(str(d) for d in searched)}")


def shipped_reader_profiles() -> dict[str, ReaderProfile]:
    """Every reader profile shipped in :data:`SHIPPED_READERS_DIR`, by name.

    :raises ConfigInvalid: a shipped profile is invalid (a packaging bug).
    """
    profiles = (load_reader_profile(p) for p in sorted(SHIPPED_READERS_DIR.glob("*.toml")))
    return {p.name: p for p in profiles}


def _terminal_reader_dirs(doc: _Doc, dirs: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in dirs] + [doc.path.resolve().parent.parent / "readers"]


def _terminal_rules(doc: _Doc, dirs: Iterable[str | Path] = ()) -> list[ConfigIssue]:
    d = doc.data
    issues: list[ConfigIssue] = []
    if d["counter_mode"] != CounterMode.BALANCE_CHECK and not d["programmes"]:
        issues.append(doc.issue(("programmes",), f"a {d['counter_mode']} counter serves at least one programme"))
    if _plain_http_off_host(d["server_url"]):
        issues.append(doc.issue(("server_url",), "plain http:// to another host: use https:// "
                                "(http only to loopback: 127.0.0.0/8, ::1, localhost)"))
    search = _terminal_reader_dirs(doc, dirs)
    for index, binding in enumerate(d["readers"]):
        try:
            find_reader_profile(binding["profile"], search)
        except ConfigNotFound:
            issues.append(doc.issue(("readers", index, "profile"), f"no reader profile {binding['profile']!r}"))
    return issues


def _plain_http_off_host(url: str) -> bool:
    """True for an ``http://`` URL whose host is not loopback (server answers would travel in clear)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or host.lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _resolve_path(doc: _Doc, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (doc.path.resolve().parent / path)


def profile_mode_issue(path: Path, profile: TerminalProfile) -> ConfigIssue | None:
    """The problem with a profile file's mode, if it holds supervisor password hashes others may read or write.

    The hashes are guessed offline by whoever reads them (no lock-out there), and a writable profile
    takes a supervisor line of the writer's choosing (red team round 4). Owner and group (``root:huma``,
    mode 0640) are the daemon's: an owner other than root or the account reading it is refused too (it
    reads and rewrites the file whatever the mode, red team round 7); a profile without ``[supervisors]``
    may stay world-readable. Both ``huma config check`` and the daemon's start-up apply this rule (docs/operations.md).

    :param path: the profile file (its mode is read now). :param profile: the profile loaded from it.
    :returns: None when the mode is fine; else one issue naming the mode and the fix.
    """
    if not profile.supervisors:
        return None
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, os.geteuid()):  # its owner reads and rewrites it whatever the mode (red team round 7)
        return ConfigIssue(path, None, "supervisors",
                           f"lists supervisor password hashes and is owned by account {st.st_uid}, neither root nor "
                           f"this one: chown root:huma and chmod 640 it (docs/operations.md)")
    if not mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        return None
    return ConfigIssue(path, None, "supervisors",
                       f"lists supervisor password hashes and is readable by other accounts or writable by more "
                       f"than its owner (mode {mode:04o}): chown root:huma and chmod 640 it (docs/operations.md)")


def load_terminal_profile(path: str | Path, reader_dirs: Iterable[str | Path] = ()) -> TerminalProfile:
    """Load and validate one terminal profile and the reader profiles it names.

    Relative ``paths.key`` / ``paths.journal`` are taken relative to the
    profile file's directory. Reader profiles are searched in ``reader_dirs``,
    then ``<profile dir>/../readers``, then the shipped profiles.

    :raises ConfigNotFound: the file does not exist.
    :raises ConfigSyntaxError: not UTF-8 or not TOML 1.0.
    :raises ConfigSchemaError: a reader profile, or the profile breaks the schema,
        or it names a reader profile that does not exist.
    :raises ConfigInvalid: a named reader profile is itself invalid.
    """
    reader_dirs = list(reader_dirs)
    doc = _Doc(Path(path))
    kind = doc.kind()
    if kind is not ProfileKind.TERMINAL:
        raise ConfigSchemaError(
            [ConfigIssue(doc.path, 1, "kind", "this is a reader profile, a terminal profile was expected")])
    issues = _schema_issues(doc, kind) or _terminal_rules(doc, reader_dirs)
    _raise_issues(issues)
    d = doc.data
    search = _terminal_reader_dirs(doc, reader_dirs)
    policy = d.get("policy", {})
    journal = _resolve_path(doc, d["paths"]["journal"])
    return TerminalProfile(
        terminal_id=d["terminal_id"],
        region=d["region"],
        counter_mode=CounterMode(d["counter_mode"]),
        programmes=tuple(d["programmes"]),
        server_url=d["server_url"],
        sync_interval=float(d["sync_interval"]),
        key_path=_resolve_path(doc, d["paths"]["key"]),
        journal_path=_resolve_path(doc, d["paths"]["journal"]),
        readers=tuple(
            ReaderBinding(
                profile=find_reader_profile(b["profile"], search),
                slot_pattern=re.compile(b["slot_pattern"]) if "slot_pattern" in b else None,
            )
            for b in d["readers"]
        ),
        language=Language(d.get("language", Language.ID)),
        policy=PolicyOverrides(
            offline_cap_per_tap=policy.get("offline_cap_per_tap"),
            offline_cap_per_card_since_sync=policy.get("offline_cap_per_card_since_sync"),
            offline_terminal_exposure=policy.get("offline_terminal_exposure"),
            max_days_since_bundle=policy.get("max_days_since_bundle"),
        ),
        screen_port=int(d.get("screen_port", 8480)),
        supervisors=dict(d.get("supervisors", {})),
        root_key_path=_resolve_path(doc, d["paths"].get("root_key", str(journal.parent / "trust-root.pem"))),
        bundle_path=_resolve_path(doc, d["paths"].get("bundle", str(journal.parent / "bundle.cose"))),
        passphrase_path=_resolve_path(doc, d["paths"]["passphrase"]) if "passphrase" in d["paths"] else None,
        key_store=TerminalKeyStore(**d.get("key", {})),
        card_keys_path=_resolve_path(doc, d["paths"]["card_keys"]) if "card_keys" in d["paths"] else None,
        card_keys_passphrase_path=(_resolve_path(doc, d["paths"]["card_keys_passphrase"])
                                   if "card_keys_passphrase" in d["paths"] else None),
        source=doc.path,
    )


def load_profile(path: str | Path, reader_dirs: Iterable[str | Path] = ()) -> ReaderProfile | TerminalProfile:
    """Load a reader or terminal profile, telling which from its ``kind`` key or content.

    :raises ConfigNotFound, ConfigSyntaxError, ConfigSchemaError: as the two loaders.
    """
    kind = _Doc(Path(path)).kind()
    if kind is ProfileKind.READER:
        return load_reader_profile(path)
    return load_terminal_profile(path, reader_dirs)
