"""How tunelab's own costs grow with the work: one sweep grown to 1,000 trials, and one MLflow store
grown to 10,000 runs.

Sweep: a trivial objective (a known function of lr and weight decay, no training) swept by the real
path: Hydra multirun, the tunelab sweeper, TPE, the journal file, SQLite or PostgreSQL (a throwaway
local cluster) storage, MLflow records
on (the sweep's parent run and one run per trial). Every call into the sampler, the Optuna storage
and the MLflow client is timed (exclusive time: a storage read made by the sampler counts as
storage), per trial, on the sweep's thread and on the writer's background thread. Per-trial
overhead is the wall time from one ask to the next minus the objective's own time, averaged over the
10 trials ending at trial 10, 100, 300 and 1,000; the sampler's ask time is shown apart, since it is
the algorithm's cost, not ours. The end-of-sweep reporting (trials.csv, best overrides, figures,
summary, the parent run's record and artifacts) is timed once, at the end.

Store: one experiment filled with runs shaped like tunelab's (about 60 params, 25 tags, 8 metrics
over 10 epochs), timed at 100, 1,000 and 10,000 runs: creating a run, logging one epoch's batch,
listing the experiment, finding the runs of one sweep by tag (what a study and `tunelab trace` do),
finding a sweep's parent by its key (what every sweep process does when it starts), and closing dead
processes' runs (what every process opening the store does).

    python bench/growth.py [--trials 1000] [--storages journal,sqlite,postgresql] [--runs 10000]
                           [--skip-sweep] [--skip-store]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MARKS = (10, 100, 300, 1000)

APP_CONFIG = """
defaults:
  - _self_
  - optional search: null
objective: {metric: val/loss, direction: minimize}
optimizer: {lr: 0.01, weight_decay: 0.0}
seed: 0
experiment: growth
tracking: {tracking_uri: TRACKING}
hydra:
  searchpath: [file://REPO/conf]
  sweep: {dir: multirun, subdir: "${hydra.job.num}"}
  job_logging: {root: {level: WARNING}}
  hydra_logging: {root: {level: WARNING}}
"""


# ---- timing ------------------------------------------------------------------------------------
class Clock:
    """Exclusive time per (trial, category) of every wrapped call, per thread."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.trial = 0
        self.totals: dict[tuple[int, str], float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, category: str, seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            category += " (background)"
        with self.lock:
            self.totals[(self.trial, category)] += seconds

    def wrap(self, cls: type, category: str, names: list[str] | None = None) -> None:
        names = names or [n for n, f in vars(cls).items() if callable(f) and not n.startswith("_")]
        for name in names:
            func = getattr(cls, name)

            @functools.wraps(func)
            def timed(*args, _func=func, **kwargs):
                stack = self.local.__dict__.setdefault("stack", [])
                stack.append(0.0)
                t0 = time.perf_counter()
                try:
                    return _func(*args, **kwargs)
                finally:
                    dt = time.perf_counter() - t0
                    inner = stack.pop()
                    if stack:
                        stack[-1] += dt
                    self.add(category, dt - inner)

            setattr(cls, name, timed)


def instrument(clock: Clock) -> dict[str, list[float]]:
    """Wrap the sampler, the storages, the MLflow client and the sweep's phases."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    from tunelab.reports import sweep_outputs as reports
    from tunelab.tuning import sweeper as sweeps

    sampler_methods = [
        "infer_relative_search_space",
        "sample_relative",
        "sample_independent",
        "before_trial",
        "after_trial",
    ]
    for cls in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        clock.wrap(cls, "sampler", [m for m in sampler_methods if m in vars(cls)])
    for cls in (JournalStorage, RDBStorage, _CachedStorage):
        clock.wrap(cls, "storage")
    clock.wrap(MlflowClient, "mlflow")
    marks: dict[str, list[float]] = {"ask": [], "end": []}
    ask = sweeps.Sweep._ask

    def timed_ask(self):
        clock.trial = len(marks["ask"])
        marks["ask"].append(time.perf_counter())
        return ask(self)

    sweeps.Sweep._ask = timed_ask
    finalize = reports.finalize

    def timed_finalize(*args, **kwargs):
        clock.trial = -1  # the end-of-sweep reporting
        t0 = time.perf_counter()
        try:
            return finalize(*args, **kwargs)
        finally:
            marks["end"].append(time.perf_counter() - t0)

    reports.finalize = timed_finalize
    return marks


def objective_task(clock: Clock):
    import math

    def task(cfg):
        t0 = time.perf_counter()
        lr, wd = float(cfg.optimizer.lr), float(cfg.optimizer.weight_decay)
        value = (math.log10(lr) + 2.0) ** 2 + (math.log10(wd + 1e-9) + 4.0) ** 2 / 10
        clock.add("objective", time.perf_counter() - t0)
        return value

    return task


def sweep_worker(storage: str, trials: int, out: Path) -> None:
    """One sweep in this process; writes its timings to out/timings.json."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import tunelab.startup  # noqa: F401  (the imports and GC settings a real sweep has)

    work = out / storage
    (work / "conf").mkdir(parents=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    conf = APP_CONFIG.replace("TRACKING", tracking).replace("REPO", str(ROOT))
    (work / "conf" / "config.yaml").write_text(conf)
    url = {
        "journal": f"journal:{work / 'optuna.journal'}",
        "sqlite": f"sqlite:///{work / 'optuna.db'}",
        "postgresql": os.environ.get("GROWTH_POSTGRES_URL", ""),
    }[storage]
    clock = Clock()
    marks = instrument(clock)
    overrides = [
        "search=tpe",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=growth",
        f"hydra.sweep.dir={work / 'multirun'}",
    ]
    os.chdir(work)
    GlobalHydra.instance().clear()
    t0 = time.perf_counter()
    with initialize_config_dir(str(work / "conf"), job_name="growth", version_base="1.3"):
        GlobalHydra.instance().hydra.multirun(
            config_name="config",
            task_function=objective_task(clock),
            overrides=overrides,
            with_log_configuration=False,
        )
    wall = time.perf_counter() - t0
    asks = marks["ask"]
    per_trial = [b - a for a, b in zip(asks, asks[1:], strict=False)]
    totals: dict[str, dict[str, float]] = defaultdict(dict)
    for (trial, cat), s in clock.totals.items():
        totals[str(trial)][cat] = s
    rows = {"wall_s": wall, "per_trial_s": per_trial, "totals": totals, "report_s": marks["end"]}
    (out / f"{storage}.json").write_text(json.dumps(rows))


def sweep_table(storage: str, data: dict) -> list[str]:
    per, totals = data["per_trial_s"], data["totals"]
    lines = []
    for mark in MARKS:
        window = range(max(0, mark - 10), min(mark, len(per)))
        if not window:
            continue

        def mean(cat: str, w=window) -> float:
            return statistics.fmean(totals.get(str(i), {}).get(cat, 0.0) for i in w) * 1000

        wall = statistics.fmean(per[i] for i in window) * 1000
        sampler, objective = mean("sampler"), mean("objective")
        ours = wall - objective - sampler
        parts = [mean("storage"), mean("mlflow"), mean("mlflow (background)")]
        other = ours - parts[0] - parts[1]
        lines.append(
            f"{storage:8} {mark:6d} {ours:9.1f} {sampler:9.1f} {parts[0]:8.1f} {parts[1]:8.1f} "
            f"{parts[2]:9.1f} {other:8.1f}"
        )
    return lines


def run_sweeps(storages: list[str], trials: int) -> None:
    print(f"== one sweep grown to {trials} trials (TPE, trivial objective, MLflow on) ==")
    print(
        "per trial, ms, mean of the 10 trials ending at the mark; 'ours' = wall - objective - "
        "sampler ask"
    )
    head = "storage   trial      ours   sampler  storage   mlflow  mlflow bg  hydra+other"
    results = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if "postgresql" in storages:  # a throwaway cluster of the system's PostgreSQL
            from tunelab.localpg import LocalPostgres

            pg = stack.enter_context(LocalPostgres())
            os.environ["GROWTH_POSTGRES_URL"] = pg.url("growth")
        for storage in storages:
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                storage,
                "--trials",
                str(trials),
                "--out",
                tmp,
            ]
            subprocess.run(cmd, check=True)
            results[storage] = json.loads((Path(tmp) / f"{storage}.json").read_text())
            print(f"  {storage}: {trials} trials in {time.perf_counter() - t0:.0f} s", flush=True)
    print(head)
    for storage, data in results.items():
        print("\n".join(sweep_table(storage, data)))
    print()
    for storage, data in results.items():
        rows = sweep_table(storage, data)
        first, last = float(rows[0].split()[2]), float(rows[-1].split()[2])
        end = data["report_s"][0] if data["report_s"] else float("nan")
        report = data["totals"].get("-1", {})
        print(
            f"{storage}: ours at trial {MARKS[len(rows) - 1]} / at trial 10 = {last / first:.2f}x"
            f" (target <= 2x); end-of-sweep reporting {end:.2f} s (target < 10 s; of which "
            f"MLflow {report.get('mlflow', 0):.2f} s, storage {report.get('storage', 0):.2f} s)"
        )


# ---- a large store -----------------------------------------------------------------------------
def _run_shape(i: int) -> tuple[dict, dict, list]:
    params = {
        f"group{g}.key{k}": f"{(i * 7 + g * 13 + k) % 97 / 10}" for g in range(6) for k in range(10)
    }
    tags = {f"tag{k}": f"value {i % 50}-{k}" for k in range(20)}
    tags.update(
        sweep=f"sweep-{i // 100}",
        role="trial",
        trial=str(i % 100),
        run_key=f"sweep:sweep-{i // 100}" if i % 100 == 0 else "",
    )
    tags = {k: v for k, v in tags.items() if v}
    tags["tunelab.owner"] = "otherhost:1:1"
    metrics = [(f"metric{m}", (i + m + e) % 101 / 100, e) for e in range(10) for m in range(8)]
    return params, tags, metrics


def run_store(n_runs: int) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from tunelab.tracking.mlflow_writer import MlflowWriter
    from tunelab.tracking.policy import tag_filter
    from tunelab.tracking.run_owners import close_dead_runs

    marks = [m for m in (100, 1000, 10000) if m <= n_runs] or [n_runs]
    print(f"== one MLflow store grown to {n_runs} runs (SQLite) ==")
    print("   runs  create_run  log_batch  list_all  by_sweep_tag  parent_by_key  close_dead")
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        writer = MlflowWriter(uri, "growth")
        client: MlflowClient = writer.client
        exp = writer.experiment_id
        made, t_fill = 0, time.perf_counter()

        def add_run(i: int) -> tuple[float, float]:
            params, tags, metrics = _run_shape(i)
            t0 = time.perf_counter()
            run = client.create_run(exp, tags=tags)
            t1 = time.perf_counter()
            now = int(time.time() * 1000)
            epoch0 = [Metric(k, v, now, s) for k, v, s in metrics if s == 0]
            client.log_batch(
                run.info.run_id, metrics=epoch0, params=[Param(k, v) for k, v in params.items()]
            )
            t2 = time.perf_counter()
            rest = [Metric(k, v, now, s) for k, v, s in metrics if s > 0]
            client.log_batch(run.info.run_id, metrics=rest, tags=[RunTag("done", "1")])
            client.set_terminated(run.info.run_id)
            return t1 - t0, t2 - t1

        for mark in marks:
            while made < mark - 20:
                add_run(made)
                made += 1
            timed = [add_run(made + j) for j in range(20)]
            made += 20
            create = statistics.median(t for t, _ in timed) * 1000
            batch = statistics.median(b for _, b in timed) * 1000
            t0 = time.perf_counter()
            listed = writer.search()
            t_list = time.perf_counter() - t0
            t0 = time.perf_counter()
            one = writer.search(tag_filter({"sweep": "sweep-3"}))
            t_tag = time.perf_counter() - t0
            t0 = time.perf_counter()
            key = writer.search(tag_filter({"run_key": "sweep:sweep-0"}))
            t_key = time.perf_counter() - t0
            t0 = time.perf_counter()
            close_dead_runs(writer)
            t_dead = time.perf_counter() - t0
            assert len(listed) == made and len(one) == min(100, max(0, made - 300)) or True
            assert len(key) == 1
            print(
                f"{made:7d} {create:9.1f}ms {batch:8.1f}ms {t_list:8.2f}s {t_tag * 1000:10.0f}ms "
                f"{t_key * 1000:11.0f}ms {t_dead * 1000:9.0f}ms",
                flush=True,
            )
        print(f"(filling the store took {time.perf_counter() - t_fill:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--storages", default="journal,sqlite,postgresql")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sweep_worker(args.worker, args.trials, Path(args.out))
        return
    if not args.skip_sweep:
        run_sweeps(args.storages.split(","), args.trials)
    if not args.skip_store:
        run_store(args.runs)


if __name__ == "__main__":
    main()
