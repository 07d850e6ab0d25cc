"""The up-front check of the config of a training loop the user wrote (`tunelab.tracked_run`):
the keys tunelab reads (seed, objective, trainer, tracking, `_target_`s), every problem at once,
before any run, directory, lock or study exists. The user's own keys are theirs: not checked.
The objective may name any metric the loop logs; the loop's first epoch checks that it does."""

from __future__ import annotations

from omegaconf import DictConfig

from tunelab.config import groups, rules, targets
from tunelab.config.schema import ConfigError, group_problems, resolved_plain

REQUIRED = ("seed", "objective", "trainer", "tracking")
# the trainer settings tunelab's own loop reads but a user's loop does not go through tunelab for
NOT_READ = ("replicas", "batch_replicas")


def validate_own_loop(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of the keys tracked_run reads."""
    plain = resolved_plain(cfg)
    problems = targets.problems(cfg, targets.allowed(cfg))
    missing = [k for k in REQUIRED if not isinstance(plain.get(k), dict) and k != "seed"]
    missing += ["seed"] if "seed" not in plain else []
    for key in missing:
        problems.append(
            f"{key} is required by tunelab.tracked_run: add it to your primary config (seed: 0; "
            "objective: {metric: val/acc, direction: maximize}; trainer: default and "
            "tracking: mlflow from tunelab's conf/ in its defaults)"
        )
    if "seed" in plain and (allowed := groups.SEED(plain["seed"])):
        problems.append(f"seed={plain['seed']!r} is invalid: expected {allowed}")
    objective = plain.get("objective") if isinstance(plain.get("objective"), dict) else {}
    for key, check in (
        ("metric", rules.text),
        ("direction", rules.one_of("maximize", "minimize")),
    ):
        if isinstance(plain.get("objective"), dict) and (allowed := check(objective.get(key))):
            problems.append(
                f"objective.{key}={objective.get(key)!r} is invalid: expected {allowed}"
            )
    trainer = plain.get("trainer")
    if isinstance(trainer, dict):
        replicas = trainer.get("replicas")
        if replicas not in (None, 1):
            problems.append(
                f"trainer.replicas={replicas!r} is invalid: a loop of your own trains one seed "
                "per run (set trainer.replicas: null; a sweep's seeds then run as a job each)"
            )
        checked = {k: v for k, v in trainer.items() if k not in NOT_READ}
        stop = checked.get("early_stopping")
        if isinstance(stop, dict):  # the loop's metrics are the user's: any name may be watched
            checked["early_stopping"] = {k: v for k, v in stop.items() if k != "metric"}
        problems += group_problems("trainer", checked)
    if isinstance(plain.get("tracking"), dict):
        problems += group_problems("tracking", plain["tracking"])
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
