"""Re-test the seed articles' claims and write docs/FINDINGS.md from the runs.

    tunelab findings run                      run every study and sweep the store lacks, then write
    tunelab findings run --only dropout l2    only these claims' runs (the document needs them all)
    tunelab findings write                    regenerate docs/FINDINGS.md and its figures only
    tunelab findings run --budget reduced --tracking-uri sqlite:///tmp/f/mlflow.db --out /tmp/f/FINDINGS.md

The claims, their studies and the budgets are in docs/findings/claims.yaml. The runs go to the
experiment `findings` (`findings-<budget>` for other budgets) of the findings' own store
(results/findings/mlflow.db: `tunelab ui --tracking-uri sqlite:///results/findings/mlflow.db
--experiment findings` browses it), the studies' and sweeps' output directories and logs under --work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.commands import common
from tunelab.commands.common import CommandError

HELP = "re-test the seed articles' claims; write docs/FINDINGS.md from the runs"
ROOT = Path(__file__).resolve().parents[3]
STORE = (
    "sqlite:///results/findings/mlflow.db"  # the findings' own store (Optuna's journal beside it)
)


def add_arguments(p: Any) -> None:
    p.add_argument(
        "action", choices=["run", "write"], help="run what is missing, then write; or only write"
    )
    p.add_argument("--budget", default="full", help="a budget of claims.yaml (default: full)")
    p.add_argument("--only", nargs="+", metavar="CLAIM", help="run only these claims (run)")
    p.add_argument("--claims", type=Path, default=ROOT / "docs/findings/claims.yaml")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs/FINDINGS.md",
        help="the document; its figures go to findings/ beside it",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("results/findings"),
        help="the studies' output directories and logs",
    )
    p.add_argument("--jobs", type=int, default=1, help="studies and sweeps run side by side")
    p.add_argument(
        "--tracking-uri", help=f"the MLflow store (default: $MLFLOW_TRACKING_URI, else {STORE})"
    )


def run(args: Any) -> int:
    import os

    from tunelab.findings import document, runner, spec, store
    from tunelab.tracking.store_uri import absolute_uri, sqlite_path

    try:
        claims = spec.load(args.claims)
        claims.budget(args.budget)
        given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or STORE
        if args.action == "run":
            uri = absolute_uri(given)
            if (path := sqlite_path(uri)) is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            runner.run_all(claims, args.budget, uri, args.work / args.budget, args.only, args.jobs)
            if args.only:
                print(
                    "ran the claims asked for; `tunelab findings write` writes the document "
                    "once every claim is in the store"
                )
                return 0
        else:
            uri = common.store_uri(given)
        reader = store.Reader(uri, claims.experiment_for(args.budget))
        written = document.write(claims, args.budget, reader, args.out)
    except (spec.SpecError, runner.RunFailed, store.Missing, KeyError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None
    print(
        f"wrote {written.path} ({len(written.figures)} figures, {len(set(written.run_ids))} runs "
        f"cited, {sum(e - s for s, e in written.spans) / 3600:.2f} h of compute)"
    )
    return 0
