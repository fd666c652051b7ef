"""``make demo``: the main job end to end on virtual cards, real pcscd + vpcd, SQLite.

Runs :func:`simulator.scenario.run_day`: keys, server, enrolment of three counters
and a provisioning station, a batch of cards, a counter day with a declined
card, a torn write, an offline stretch and a cloned card, then sync,
reconciliation and journal verification. Prints a short story and exits 0;
any step that does not produce what the story needs exits 1 with the step's
evidence (logs stay in the work directory when ``--workdir`` is given).
SIGTERM, SIGHUP or Ctrl-C stop everything the demo started (server, counters,
pcscd) and exit 128 + the signal number.

Usage: ``python -m simulator.demo [--households N] [--workdir DIR] [--keep-running] [--seed N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from simulator.scenario.day import DayResult


@click.command()
@click.option("--households", default=6, show_default=True, type=click.IntRange(6, 200),
              help="Cards to provision (the story needs six roles).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep keys, databases, journals, cards and logs here (default: a temporary directory, removed).")
@click.option("--keep-running", is_flag=True, help="Leave the server and counters up until Ctrl-C.")
@click.option("--seed", default=2026, show_default=True, help="Seeds household references and chip UIDs.")
@click.option("--result-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the run's outcomes as JSON (for tests).")
def demo(households: int, workdir: Path | None, keep_running: bool, seed: int, result_json: Path | None) -> None:
    """A counter day on virtual cards: issue, serve offline, reconcile, catch a clone."""
    import dataclasses
    import json

    from simulator.scenario import ScenarioOptions, run_day
    from simulator.scenario.day import Stopped, Story
    from simulator.scenario.world import ScenarioError

    story = Story()
    story.console.print("[bold]Kartu Huma Betang — a counter day on virtual cards[/] "
                        "(real pcscd + vpcd, waitress + SQLite, all on 127.0.0.1)")
    try:
        result = run_day(ScenarioOptions(households, workdir, keep_running, seed), story)
    except ScenarioError as exc:
        story.console.print(f"[bold red]demo failed:[/] {exc}")
        raise SystemExit(1) from exc
    except Stopped as exc:
        story.console.print(f"[bold yellow]demo {exc}[/]; server, counters and pcscd are stopped")
        raise SystemExit(128 + exc.signum) from exc
    except KeyboardInterrupt as exc:
        story.console.print("[bold yellow]demo interrupted[/]; server, counters and pcscd are stopped")
        raise SystemExit(130) from exc
    if result_json is not None:
        result_json.write_text(json.dumps(dataclasses.asdict(result), default=str, indent=1))
    story.console.print(closing_line(result, story.elapsed(), keep_running))


def closing_line(result: DayResult, elapsed_s: float, keep_running: bool) -> str:
    """The demo's last line (rich markup): the scripted run's counts, as reconciliation saw them at its end.

    With ``--keep-running`` the counts are still the scripted run's: taps, uploads and reconciliations
    made while it kept running are not in them, and the line says so.

    :param elapsed_s: seconds since the start, the kept-running time included.
    """
    clones = [f for f in result.findings if f.get("card_id") == result.clone_card_id]
    counts = (f"{sum(result.committed.values())} redemptions committed on {len(result.committed)} cards, "
              f"{len(result.findings)} finding(s) ({len(clones)} on the cloned card), journals verified")
    if keep_running:
        return (f"\n[bold green]done[/] after {elapsed_s:.0f} s; the scripted run: {counts} "
                "(what was done while it kept running is not counted here: see the auditor pages).")
    return f"\n[bold green]done[/] in {elapsed_s:.0f} s: {counts}."


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    try:
        demo.main(args=argv, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
