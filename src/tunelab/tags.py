"""The tags tunelab writes on its MLflow runs, and the roles a run plays: the data contract that
`tunelab trace`, `tunelab reproduce`, the findings and the MLflow UI read. Every writer and
reader names a tag or a role from here, so a rename is one change. Imports nothing."""

from __future__ import annotations


class Role:
    """What a run is: the values of its `role` tag (plain text, so they serialise anywhere)."""

    SINGLE = "single"  # one training run (`tunelab train`, a multirun's job)
    MULTIRUN = "multirun"  # the parent of a Hydra multirun's jobs
    SWEEP = "sweep"  # the parent run of a search sweep (one per study name)
    TRIAL = "trial"  # one Optuna trial of a sweep: the parent of its seed runs
    SEED = "seed"  # one seed's training run of a trial
    STUDY = "study"  # the parent run of a playbook study
    CELL = "cell"  # one cell of a study
    CONFIRM = "confirm"  # one seed of a cell's confirmation
    PIPELINE = "pipeline"  # the DVC pipeline's run, parent of its stages' runs
    DIAGNOSE = "diagnose"  # `tunelab diagnose`: the checks before training
    ALL = (SINGLE, MULTIRUN, SWEEP, TRIAL, SEED, STUDY, CELL, CONFIRM, PIPELINE, DIAGNOSE)


TRAINING_ROLES = (Role.CONFIRM, Role.SEED, Role.TRIAL)  # the runs of a study that trained something

# what a run is and where it belongs
ROLE = "role"
SWEEP = "sweep"  # the sweep's (Optuna study's) name
TRIAL = "trial"  # the trial's number
REPLICATE = "replicate"  # the index of a trial's seed run
SEED = "seed"
STUDY = "study"  # the playbook study's name
CELL = "cell"  # the study cell's name
OPTUNA_STATE = "optuna_state"  # a trial run's Optuna state
RUN_KEY = "run_key"  # the key of a run shared by processes (kind:name)
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: the run this one is nested under
NOTE = "mlflow.note.content"  # MLflow's own: the description the UI shows over a run
COMPARE_RUNS = "compare.runs"  # the runs a parent lists for `tunelab ui --compare`

# where it came from (lineage)
GIT_SHA = "git_sha"
GIT_DIRTY = "git_dirty"  # "true": the run's code had uncommitted changes (its git.diff artifact)
DATA_DIGEST = "data_digest"
OVERRIDES = "overrides"
SWEPT = "swept"  # the sweep's swept keys (comma-separated)
WARM_START_FROM = "warm_start_from"  # a sweep's earlier study (name@storage) tried first
DVC_STAGE = "dvc_stage"
TASK = "task"  # what the run trains: classification | binary | multilabel | regression
TASK_LOSS = "task.loss"  # its loss (cross_entropy, bce, mse, huber, l1)
TASK_METRICS = "task.metrics"  # its validation metrics, comma-separated
DVC_EXP = "dvc_exp"
REPRODUCES = "reproduces"  # a reproduction's original run
REPRODUCTION_KEY = "reproduction_key"  # a reproduction's random key, found again by it
REPRODUCTION = "reproduction"  # a reproduction's verdict: match or differs
ENSEMBLE = "ensemble"  # a confirmation's seed ensemble beside the single-seed mean ± sd, in words
REFIT = "refit"  # confirm.refit's value on a run whose test/* is a refit's (train+val)
ENTRY_POINT = "entry_point"  # the script a run of a loop of the user's own ran (repo-relative)

# how it ended
FAILURE_REASON = "failure_reason"
FAILURE_MESSAGE = "failure_message"
FAILURE_TAGS = (FAILURE_REASON, FAILURE_MESSAGE)
DATA_FRACTION = "data_fraction"  # a fidelity=data sweep's trial: the training fraction it reached
FEASIBLE = "feasible"  # a constrained sweep's trial: "true" when it meets hydra.sweeper.constraints
DIVERGED_AT_EPOCH = "diverged_at_epoch"
PREEMPTED = "preempted"  # SLURM warned the job (time limit, preemption) and requeued it
MODEL_FORMAT = "model_format"

# which process works on it (tracking/run_owners.py)
OWNER = "tunelab.owner"  # the owner stamp of the process that created (or resumed) it
WORKER_PREFIX = "tunelab.worker."  # + a digest of the stamp of a process working on a shared run


def tag_ref(name: str) -> str:
    """A tag as an MLflow search filter names it (`tags.`name``)."""
    return f"tags.`{name}`"
