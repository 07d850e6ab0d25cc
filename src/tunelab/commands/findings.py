"""Re-test the seed articles' claims and write docs/FINDINGS.md from the runs.

    tunelab findings run                      run every study and sweep the store lacks, then write
    tunelab findings run --only dropout l2    only these claims' runs (the document needs them all)
    tunelab findings write                    regenerate docs/FINDINGS.md and its figures only
    tunelab findings export                   write the record (docs/findings/record.parquet) from the store
    tunelab findings write --from-record docs/findings/record.parquet   the document from the record alone
    tunelab findings run --budget reduced --tracking-uri sqlite:///tmp/f/mlflow.db --out /tmp/f/FINDINGS.md

The claims, their studies and the budgets are in docs/findings/claims.yaml. The runs go to the
experiment `findings` (`findings-<budget>` for other budgets) of the findings' own store
(results/findings/mlflow.db: `tunelab ui --tracking-uri sqlite:///results/findings/mlflow.db
--experiment findings` browses it), the studies' and sweeps' output directories and logs under --work.
`run` also exports the record beside the document (findings/record.parquet): every run of the
experiment as data, from which `write` regenerates the document, and `tunelab trace` answers, when
the store is absent."""

from __future__ import annotations

import sys
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
        "action",
        choices=["run", "write", "export"],
        help="run what is missing, then write and export; only write; or only export the record",
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
    p.add_argument(
        "--record",
        type=Path,
        help="the record (default: findings/record.parquet beside the document)",
    )
    p.add_argument(
        "--from-record",
        action="store_true",
        help="write from the record, not the store (the default when the store is absent)",
    )
    p.add_argument("--jobs", type=int, default=1, help="studies and sweeps run side by side")
    p.add_argument(
        "--tracking-uri", help=f"the MLflow store (default: $MLFLOW_TRACKING_URI, else {STORE})"
    )


def run(args: Any) -> int:
    import os

    from tunelab.findings import document, record, runner, spec, store
    from tunelab.tracking.store_uri import absolute_uri, missing_store, sqlite_path

    record_path = args.record or args.out.parent / "findings" / "record.parquet"
    try:
        claims = spec.load(args.claims)
        claims.budget(args.budget)
        experiment = claims.experiment_for(args.budget)
        given = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or STORE
        from_record = args.action == "write" and (
            args.from_record or (missing_store(absolute_uri(given)) and record_path.is_file())
        )
        if from_record:
            reader: store.Reader = record.RecordReader(record_path, experiment)
            written = document.write(claims, args.budget, reader, args.out)
            print(f"read the record {record_path}")
            return _wrote(written)
        if args.action == "export":
            reader = store.Reader(common.store_uri(given), experiment)
            n = record.export(reader, record_path)
            print(f"exported {n} runs of experiment '{experiment}' to {record_path}")
            return 0
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
        reader = store.Reader(uri, experiment)
        written = document.write(claims, args.budget, reader, args.out)
        if args.action == "run":
            n = record.export(reader, record_path)
            print(f"exported {n} runs to {record_path}")
    except (spec.SpecError, runner.RunFailed, store.Missing, record.RecordError, KeyError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None
    return _wrote(written)


def _wrote(written: Any) -> int:
    print(
        f"wrote {written.path} ({len(written.figures)} figures, {len(set(written.run_ids))} runs "
        f"cited, {sum(e - s for s, e in written.spans) / 3600:.2f} h of compute)"
    )
    if written.drift:  # the document is written, flagged; the conclusions need rewriting
        print(
            "conclusions of claims.yaml that rest on verdicts the runs no longer give (not "
            "printed; rewrite them and their rests_on):\n  " + "\n  ".join(written.drift),
            file=sys.stderr,
        )
        return 1
    return 0
