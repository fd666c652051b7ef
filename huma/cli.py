"""The ``huma`` command: one console script, one subcommand group per area.

Each package owns its click group in its own ``cli`` module; this module only
mounts them and turns the packages' error roots into messages and exit codes
(the only place that does so).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from cardlib.type2 import ReaderCapabilities

# (subcommand name, module, attribute): imported lazily so that a counter
# without the server extra (Flask, SQLAlchemy) still runs `huma terminal`.
_GROUPS: list[tuple[str, str, str]] = [
    ("readers", "cardlib.cli", "readers"),
    ("card", "cardlib.cli", "card"),
    ("sim", "simulator.cli", "sim"),
    ("keys", "cardlib.keys.cli", "keys"),
    ("provision", "cardlib.provision.cli", "provision"),
    ("server", "server.cli", "server"),
    ("audit", "server.audit.cli", "audit"),
    ("config", "firmware_config.cli", "config"),
    ("terminal", "terminal.cli", "terminal"),
    ("journal", "terminal.cli", "journal"),
]


#: Top-level packages of the source checkout that the product wheel leaves out (setup.cfg).
_CHECKOUT_ONLY = frozenset({"simulator"})


def _missing_hint(name: str, exc: ModuleNotFoundError) -> str:
    """One line saying why ``huma NAME`` cannot run here and what to do."""
    top = (exc.name or "").split(".")[0]
    if top in _CHECKOUT_ONLY:
        return (f"'huma {name}' is not in this installation: {top!r} ships with the source "
                "checkout only (run it there after `make setup`)")
    return f"'huma {name}' needs the Python package {exc.name!r}: run `make setup` (or pip install the matching extra)"


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, _, _ in _GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in _GROUPS:
            if name == cmd_name:
                try:
                    mod = importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    raise click.ClickException(_missing_hint(name, exc)) from exc
                cmd = getattr(mod, attr)
                assert isinstance(cmd, click.Command)
                return cmd
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """``huma --help`` lists every group; one whose package is missing says so instead of failing."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))  # click's own width for the short help
        rows: list[tuple[str, str]] = []
        for name in names:
            try:
                cmd = self.get_command(ctx, name)
            except click.ClickException:
                rows.append((name, "(not installed here)"))
                continue
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def reader_caps_from_profiles(reader_name: str) -> ReaderCapabilities | None:
    """The capabilities (pass-through, frame size) of the shipped PC/SC reader profile naming ``reader_name``.

    Only profiles with a pass-through (``acr122u``, ``part3``) count: the catch-all ``generic-ccid``
    (no pass-through) matches every name. None when no such profile matches, or several do.

    :raises ConfigInvalid: a shipped profile is invalid (a packaging bug).
    """
    from firmware_config.loader import shipped_reader_profiles
    from firmware_config.models import PassThrough, Stack

    found = [p for p in shipped_reader_profiles().values()
             if p.stack is Stack.PCSC and p.pass_through is not PassThrough.NONE and p.matches(reader_name)]
    return found[0].capabilities() if len(found) == 1 else None


@click.group(cls=_LazyGroup)
@click.option("-v", "--verbose", count=True, help="-v for INFO, -vv for DEBUG logging.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Kartu Huma Betang: cards, counters, server and audit."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `huma card … --kind auto` takes the reader's pass-through from the reader profiles (cardlib knows none).
    ctx.meta["cardlib.reader_caps"] = reader_caps_from_profiles


def _error_roots() -> tuple[type[BaseException], ...]:
    roots: list[type[BaseException]] = []
    for module, name in (
        ("cardlib.errors", "CardlibError"),
        ("terminal.errors", "TerminalError"),
        ("server.errors", "ServerError"),
        ("firmware_config.errors", "ConfigError"),
        ("simulator.errors", "SimulatorError"),
    ):
        try:
            roots.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(roots)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; typed errors of any package become a one-line message and exit code 2.

    :returns: the process exit status (0 success, 1 usage/click error, 2 typed error).
    """
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except _error_roots() as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
