"""``huma config``: check reader and terminal profiles, print the schema, list shipped profiles."""

from __future__ import annotations

import json
from pathlib import Path

import click

from firmware_config import schema as _schema
from firmware_config.errors import ConfigInvalid, ConfigIssue
from firmware_config.loader import (
    SHIPPED_READERS_DIR,
    SHIPPED_TERMINALS_DIR,
    load_profile,
    profile_mode_issue,
    shipped_reader_profiles,
)
from firmware_config.models import ReaderProfile


@click.group("config")
def config() -> None:
    """Reader and terminal profiles (TOML)."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--readers-dir",
    "readers_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Extra directory of reader profiles a terminal profile may name (searched first).",
)
def check(files: tuple[Path, ...], readers_dirs: tuple[Path, ...]) -> None:
    """Validate profile FILES (reader or terminal, told apart by content).

    Prints OK per valid file; every problem as FILE:LINE: KEY: message; exits
    non-zero when any file is invalid.
    """
    issues: list[ConfigIssue] = []
    for path in files:
        try:
            profile = load_profile(path, readers_dirs)
        except ConfigInvalid as exc:
            issues.extend(exc.issues)
            continue
        if isinstance(profile, ReaderProfile):
            what = f"reader profile {profile.name!r}"
        else:
            what = f"terminal profile {profile.terminal_id!r}"
            mode_issue = profile_mode_issue(path, profile)  # what the daemon would refuse at start-up
            if mode_issue is not None:
                issues.append(mode_issue)
                continue
        click.echo(f"OK {path} ({what})")
    if issues:
        raise ConfigInvalid(issues)


@config.command("schema")
@click.argument("kind", type=click.Choice(["reader", "terminal"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a reader or terminal profile."""
    document = _schema.READER_SCHEMA if kind == "reader" else _schema.TERMINAL_SCHEMA
    click.echo(json.dumps(document, indent=2))


@config.command("list")
def list_profiles() -> None:
    """List the shipped reader profiles and example terminal profiles."""
    for name, profile in sorted(shipped_reader_profiles().items()):
        click.echo(f"reader    {name:<16} {profile.stack.value:<6} {profile.description}")
    for path in sorted(SHIPPED_TERMINALS_DIR.glob("*.toml")):
        click.echo(f"terminal  {path.stem:<16}        {path}")
    click.echo(f"(reader profiles in {SHIPPED_READERS_DIR})")
