"""Every setting of every shipped config-group option, with its rule.

A node of a group (`data`, `model`, `optimizer`, ...) may hold only the settings its `_target_`
takes (plus the bookkeeping keys `name`, `_target_`, `_partial_`); each value must pass its rule.
Written out here rather than read from the targets' signatures, so the check needs no torch import
and runs before anything else. tests/test_schema.py keeps these tables, the YAML files of conf/ and
the targets' signatures in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import data_rules, tasks
from tunelab.config import rules as r

BOOKKEEPING = ("name", "_target_", "_partial_")

# What the models' registries hold (tunelab/models/layers.py; a test keeps them equal).
ACTIVATIONS = ("elu", "gelu", "leaky_relu", "relu", "silu", "tanh")
NORMS = ("batch", "group", "layer", "none")
INITS = (
    "default",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "xavier_normal",
    "xavier_uniform",
)

# The metrics every epoch of the default task reports (tunelab/run/loop.py; every task's:
# config/tasks.py): what an objective or a stopping rule can watch.
EPOCH_METRICS = tasks.epoch_metrics(tasks.DEFAULT)

SEED = r.number(0, 2**32 - 1, integer=True)
DATA_COMMON = {"val_fraction": r.OPEN_UNIT, "split_seed": SEED}
SUBSET = {"train_subset": r.OPTIONAL_POSITIVE_INT}

DATA: dict[str, dict[str, r.Check]] = {
    "tunelab.data.sources.mnist1d": {
        **DATA_COMMON,
        **SUBSET,
        "num_samples": r.number(10, integer=True),
        "train_split": r.OPEN_UNIT,
        "data_seed": SEED,
        "cache_dir": r.optional_text,
    },
    "tunelab.data.sources.digits": {**DATA_COMMON, "test_fraction": r.OPEN_UNIT},
    "tunelab.data.sources.npz": {
        **DATA_COMMON,
        "path": r.text,
        "standardize": r.boolean,
        "x_key": r.text,
        "y_key": r.text,
        "x_test_key": r.text,
        "y_test_key": r.text,
    },
    "tunelab.data.sources.synthetic": {
        **DATA_COMMON,
        "num_samples": r.number(8, integer=True),
        "num_classes": r.number(2, integer=True),
        "length": r.POSITIVE_INT,
        "noise": r.NON_NEGATIVE,
        "data_seed": SEED,
    },
    "tunelab.data.sources.prepared": {"path": r.text, "source": r.anything},
    **data_rules.DATA,  # images and cifar10: config/data_rules.py
}

BLOCK = {
    "activation": r.one_of(*ACTIVATIONS),
    "norm": r.one_of(*NORMS),
    "dropout": r.FRACTION,
    "init": r.one_of(*INITS),
    "width": r.POSITIVE_INT,
}
MODEL: dict[str, dict[str, r.Check]] = {
    "tunelab.models.nets.logreg": {"init": r.one_of(*INITS)},
    "tunelab.models.nets.mlp": {**BLOCK, "depth": r.NON_NEGATIVE_INT},
    "tunelab.models.nets.cnn": {
        **BLOCK,
        "depth": r.POSITIVE_INT,
        "width_mult": r.POSITIVE,
        "kernel_size": r.POSITIVE_INT,
        "pool_every": r.POSITIVE_INT,
        "max_pools": r.NON_NEGATIVE_INT,
        "head": r.one_of("flatten", "global_avg"),
    },
    "tunelab.models.nets.resnet": {
        **BLOCK,
        "blocks_per_stage": r.positive_ints,
        "kernel_size": r.POSITIVE_INT,
    },
}

DECAY = {
    "lr": r.POSITIVE,
    "weight_decay": r.NON_NEGATIVE,
    "exclude_bias_norm_from_decay": r.boolean,
}
ADAPTIVE = {**DECAY, "betas": r.betas, "eps": r.POSITIVE}
SGD = {**DECAY, "momentum": r.FRACTION, "dampening": r.FRACTION, "nesterov": r.boolean}


@dataclass(frozen=True)
class OptimizerFacts:
    """What tunelab knows of one optimizer class: its settings with their rules; whether its
    update of a tensor is elementwise (vmapped replicas share one instance over stacked tensors,
    run/replica_rules.py); whether it adapts per-parameter step sizes (no momentum knob to raise:
    the curve diagnosis's advice differs, diagnostics/curves.py)."""

    settings: dict[str, r.Check]
    elementwise: bool
    adaptive: bool


# One row per optimizer class a conf/optimizer/<name>.yaml may name (tests/test_run.py checks).
OPTIMIZERS: dict[str, OptimizerFacts] = {
    "torch.optim.SGD": OptimizerFacts(SGD, elementwise=True, adaptive=False),
    "torch.optim.Adam": OptimizerFacts(
        {**ADAPTIVE, "amsgrad": r.boolean}, elementwise=True, adaptive=True
    ),
    "torch.optim.AdamW": OptimizerFacts(
        {**ADAPTIVE, "amsgrad": r.boolean}, elementwise=True, adaptive=True
    ),
    "torch.optim.Adamax": OptimizerFacts(ADAPTIVE, elementwise=True, adaptive=True),
    "torch.optim.NAdam": OptimizerFacts(
        {**ADAPTIVE, "momentum_decay": r.NON_NEGATIVE, "decoupled_weight_decay": r.boolean},
        elementwise=True,
        adaptive=True,
    ),
    "torch.optim.RAdam": OptimizerFacts(
        {**ADAPTIVE, "decoupled_weight_decay": r.boolean}, elementwise=True, adaptive=True
    ),
    "torch.optim.RMSprop": OptimizerFacts(
        {
            **DECAY,
            "alpha": r.FRACTION,
            "eps": r.POSITIVE,
            "momentum": r.FRACTION,
            "centered": r.boolean,
        },
        elementwise=True,
        adaptive=True,
    ),
    "torch.optim.Adagrad": OptimizerFacts(
        {
            **DECAY,
            "lr_decay": r.NON_NEGATIVE,
            "eps": r.POSITIVE,
            "initial_accumulator_value": r.NON_NEGATIVE,
        },
        elementwise=True,
        adaptive=True,
    ),
    "torch.optim.Adadelta": OptimizerFacts(
        {**DECAY, "rho": r.FRACTION, "eps": r.POSITIVE}, elementwise=True, adaptive=True
    ),
    # Layer-wise trust ratios (pytorch-optimizer): norms over whole tensors, so not elementwise.
    "pytorch_optimizer.LARS": OptimizerFacts(
        {**SGD, "trust_coefficient": r.POSITIVE}, elementwise=False, adaptive=False
    ),
    "pytorch_optimizer.Lamb": OptimizerFacts(
        {
            **ADAPTIVE,
            "weight_decouple": r.boolean,
            "grad_averaging": r.boolean,
            "pre_norm": r.boolean,
            "max_grad_norm": r.NON_NEGATIVE,
            "adam": r.boolean,
        },
        elementwise=False,
        adaptive=True,
    ),
}
OPTIMIZER = {target: facts.settings for target, facts in OPTIMIZERS.items()}

# The knobs of every conf/scheduler/<name>.yaml; `warmup` holds the keys every schedule has.
SCHEDULER_KNOBS: dict[str, dict[str, r.Check]] = {
    "warmup": {"warmup_epochs": r.NON_NEGATIVE, "warmup_start_factor": r.UNIT},
    "constant": {},
    "step": {"step_epochs": r.POSITIVE, "gamma": r.SHARE},
    "multistep": {"milestones_epochs": r.increasing_epochs, "gamma": r.SHARE},
    "exponential": {
        "gamma": r.POSITIVE,
        "decay_epochs": r.POSITIVE,
        "staircase": r.boolean,
        "decay_rate": r.OPTIONAL_NON_NEGATIVE,
    },
    "piecewise": {"boundaries_epochs": r.increasing_epochs, "values": r.positive_numbers},
    "polynomial": {
        "power": r.POSITIVE,
        "end_lr_factor": r.NON_NEGATIVE,
        "end_lr": r.OPTIONAL_NON_NEGATIVE,
        "decay_epochs": r.OPTIONAL_POSITIVE,
        "cycle": r.boolean,
    },
    "inverse_time": {
        "decay_rate": r.NON_NEGATIVE,
        "decay_epochs": r.POSITIVE,
        "staircase": r.boolean,
    },
    "cosine": {"min_lr_factor": r.UNIT},
    "cosine_restarts": {
        "first_cycle_epochs": r.POSITIVE,
        "t_mul": r.AT_LEAST_ONE,
        "m_mul": r.POSITIVE,
        "min_lr_factor": r.UNIT,
    },
    "linear_cosine": {
        "num_periods": r.NON_NEGATIVE,
        "alpha": r.NON_NEGATIVE,
        "beta": r.NON_NEGATIVE,
        "noise": r.NON_NEGATIVE,
        "noise_decay": r.NON_NEGATIVE,
        "noise_seed": r.INTEGER,
    },
    "noisy_linear_cosine": {
        "num_periods": r.NON_NEGATIVE,
        "alpha": r.NON_NEGATIVE,
        "beta": r.NON_NEGATIVE,
        "noise": r.POSITIVE,
        "noise_decay": r.NON_NEGATIVE,
        "noise_seed": r.optional(r.INTEGER),
    },
    "onecycle": {
        "max_lr_factor": r.POSITIVE,
        "max_lr": r.OPTIONAL_POSITIVE,
        "pct_start": r.OPEN_UNIT,
        "anneal": r.one_of("cos", "cosine", "linear"),
        "div_factor": r.POSITIVE,
        "final_div_factor": r.POSITIVE,
        "three_phase": r.boolean,
        "cycle_momentum": r.boolean,
        "base_momentum": r.UNIT,
        "max_momentum": r.UNIT,
    },
    "plateau": {
        "mode": r.one_of("min", "max"),
        "factor": r.OPEN_UNIT,
        "patience": r.NON_NEGATIVE_INT,
        "threshold": r.NON_NEGATIVE,
        "threshold_mode": r.one_of("rel", "abs"),
        "cooldown": r.NON_NEGATIVE_INT,
        "min_lr": r.NON_NEGATIVE,
        "monitor": r.one_of(*tasks.ALL_METRICS),
    },
}
SCHEDULER = {
    f"tunelab.optim.schedules.{name}": {**SCHEDULER_KNOBS["warmup"], **knobs}
    for name, knobs in SCHEDULER_KNOBS.items()
    if name != "warmup"
}

TRACKING: dict[str, dict[str, r.Check]] = {
    "tunelab.tracking.mlflow_tracker.MlflowTracker": {
        "tracking_uri": r.tracking_uri,
        "experiment": r.experiment_name,
        "log_model": r.boolean,
        "metrics_every_s": r.NON_NEGATIVE,
        "system_metrics": r.boolean,
        "system_metrics_every_s": r.number(0.1),
    },
    "tunelab.tracking.base.NullTracker": {},
}

BY_TARGET: dict[str, dict[str, dict[str, r.Check]]] = {
    "data": DATA,
    "model": MODEL,
    "optimizer": OPTIMIZER,
    "scheduler": SCHEDULER,
    "tracking": TRACKING,
}

# Groups without a _target_: one set of settings, the same for every option.
TRAINER: dict[str, r.Check] = {
    "max_epochs": r.POSITIVE_INT,
    # absent: all; set by a sweep with hydra.sweeper.fidelity=data (run/prepare.py)
    "train_fraction": r.number(0, 1, lo_open=True),
    "batch_size": r.POSITIVE_INT,
    "drop_last": r.boolean,
    "grad_accum_steps": r.POSITIVE_INT,
    "grad_clip_norm": r.OPTIONAL_POSITIVE,
    "label_smoothing": r.FRACTION,
    "precision": r.one_of("fp32", "bf16"),
    "device": r.one_of("auto", "cpu", "cuda", "mps"),
    "deterministic": r.boolean,
    "num_threads": r.OPTIONAL_POSITIVE_INT,
    "checkpoint_dir": r.text,
    "checkpoint_every_epochs": r.NON_NEGATIVE_INT,
    "resume": r.one_of("auto", "never", "must"),
    "early_stopping": r.anything,  # its own table below
    "replicas": r.seed_list,
    "batch_replicas": r.auto_or_boolean,
    "channels_last": r.boolean,
    "compile": r.boolean,
}
EARLY_STOPPING: dict[str, r.Check] = {
    "metric": r.optional(r.one_of(*tasks.ALL_METRICS)),
    "mode": r.optional(r.one_of("min", "max")),
    "patience": r.NON_NEGATIVE_INT,
    "min_delta": r.NON_NEGATIVE,
}
FINETUNE: dict[str, r.Check] = {
    "name": r.text,
    "init_checkpoint": r.optional_text,
    "freeze_backbone_epochs": r.NON_NEGATIVE_INT,
    "backbone_lr_mult": r.NON_NEGATIVE,
}
DIAGNOSE: dict[str, dict[str, r.Check]] = {
    "datacheck": {
        "imbalance_ratio": r.AT_LEAST_ONE,
        "shift_tolerance": r.POSITIVE,
        "std_ratio": r.AT_LEAST_ONE,
        "fail_on_warning": r.boolean,
    },
    "gradcheck": {
        "n_examples": r.POSITIVE_INT,
        "eps": r.POSITIVE,
        "max_params_per_tensor": r.POSITIVE_INT,
        "tolerance": r.POSITIVE,
        "train_mode": r.boolean,
    },
    "lr_range": {
        "min_lr": r.POSITIVE,
        "max_lr": r.POSITIVE,
        "num_steps": r.number(2, integer=True),
        "batch_size": r.OPTIONAL_POSITIVE_INT,
        "smoothing": r.SHARE,
        "diverge_factor": r.number(1, lo_open=True),
    },
    "overfit": {
        "n_examples": r.POSITIVE_INT,
        "max_steps": r.POSITIVE_INT,
        "target_loss": r.POSITIVE,
        "lr": r.OPTIONAL_POSITIVE,
        "regularisation_off": r.boolean,
    },
}
TOP: dict[str, r.Check] = {
    "seed": SEED,
    "experiment": r.experiment_name,
    "allowed_targets": r.texts,
}
OBJECTIVE: dict[str, r.Check] = {
    "metric": r.one_of(*tasks.ALL_METRICS),
    "direction": r.one_of("maximize", "minimize"),
}
CONFIRM: dict[str, r.Check] = {
    # retrain the selected configuration on train ∪ val before the test split (run/refit.py)
    "refit": r.optional(r.one_of("train+val")),
}
# Every group whose node validation checks, in the order its problems are listed.
NODE_GROUPS = (*BY_TARGET, "task", "trainer", "finetune", "diagnose", "objective", "confirm")
# Top-level nodes: the groups' and what train.yaml and pipeline.yaml define besides them.
TOP_NODES = (*NODE_GROUPS, "hydra", "pipeline", "augment")  # augment: config/data_rules.py


def settings_of(group: str, node: dict[str, Any]) -> dict[str, r.Check] | None:
    """The settings table of a group node, or None for a target the project does not ship (a
    user's own, allowed by `allowed_targets`: its settings are the user's)."""
    if group in BY_TARGET:
        return BY_TARGET[group].get(str(node.get("_target_")))
    if group == "trainer":
        return TRAINER
    if group == "finetune":
        return FINETUNE
    if group == "diagnose":
        knobs = DIAGNOSE.get(str(node.get("name")))
        return None if knobs is None else {"name": r.text, **knobs}
    if group == "objective":
        return OBJECTIVE
    if group == "confirm":
        return CONFIRM
    if group == "task":
        facts = tasks.TASKS.get(str(node.get("name")))
        name = {"name": r.one_of(*tasks.TASKS)}
        return name if facts is None else {**name, **facts.settings}
    return None
