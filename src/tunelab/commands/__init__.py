"""`tunelab`: the project's tools in one command (`python -m tunelab` is the same).

    tunelab reproduce RUN_ID     re-run a recorded run from its own config, commit and data; compare
    tunelab trace TARGET         the MLflow runs behind a number (a DVC metric, a study, a sweep, a run)
    tunelab ui                   the MLflow UI on the project's store, with the link to its runs
    tunelab findings run|write   re-test the seed articles' claims; docs/FINDINGS.md from the runs

Training itself stays `python src/train.py` (Hydra)."""

from __future__ import annotations

import argparse
import sys

from tunelab.commands import findings, reproduce, trace, ui
from tunelab.commands.common import CommandError

COMMANDS = {"reproduce": reproduce, "trace": trace, "ui": ui, "findings": findings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="Reproduce, trace and browse tunelab's recorded runs.",
        epilog="Training: python src/train.py [overrides]; sweeps: python src/train.py -m ...",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(
            sub.add_parser(
                name,
                help=module.HELP,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,  # examples keep their lines
            )
        )
    args = parser.parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except CommandError as exc:
        print(f"tunelab {args.command}: {exc}", file=sys.stderr)
        return 2
