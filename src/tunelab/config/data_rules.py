"""The rules of image data, data loading and augmentation: the settings tables of `data=images`,
`data=cifar10` and the `augment` group, and the cross-key rule that refuses an augmentation the
data cannot take, before anything runs. Hooked into config/groups.py and config/schema.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelab.config import rules as r

SEED = r.number(0, 2**32 - 1, integer=True)
LOADER: dict[str, r.Check] = {
    "loader": r.one_of("auto", "memory", "stream"),
    "memory_limit_mb": r.POSITIVE,
    "num_workers": r.NON_NEGATIVE_INT,
    "pin_memory": r.boolean,
    "persistent_workers": r.boolean,
    "prefetch_factor": r.POSITIVE_INT,
}
IMAGE_DATA = {
    "val_fraction": r.OPEN_UNIT,
    "split_seed": SEED,
    "train_subset": r.OPTIONAL_POSITIVE_INT,
    "path": r.text,
    **LOADER,
}
DATA: dict[str, dict[str, r.Check]] = {
    "tunelab.data.images.images": {**IMAGE_DATA, "test_fraction": r.OPEN_UNIT},
    "tunelab.data.sources.cifar10": IMAGE_DATA,
}

POLICIES = ("none", "trivialaugment", "randaugment")
SPATIAL_KEYS = ("pad", "flip", "cutout", "policy", "cutmix_alpha")  # what needs (C, H, W) images
AUGMENT: dict[str, r.Check] = {
    "name": r.text,
    "pad": r.NON_NEGATIVE_INT,
    "flip": r.boolean,
    "cutout": r.NON_NEGATIVE_INT,
    "policy": r.one_of(*POLICIES),
    "randaugment_n": r.POSITIVE_INT,
    "randaugment_m": r.number(0, 30, integer=True),
    "mixup_alpha": r.NON_NEGATIVE,
    "cutmix_alpha": r.NON_NEGATIVE,
}

# Data whose examples are sequences (C, L): no 2-D augmentation fits them.
SEQUENCE_DATA = ("tunelab.data.sources.mnist1d", "tunelab.data.sources.synthetic")


def enabled(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of `cfg` that change a batch (mixup/cutmix alpha 0, pad 0, ... are off)."""
    on = {
        "pad": int(cfg.get("pad") or 0),
        "flip": bool(cfg.get("flip", False)),
        "cutout": int(cfg.get("cutout") or 0),
        "policy": str(cfg.get("policy") or "none"),
        "mixup_alpha": float(cfg.get("mixup_alpha") or 0.0),
        "cutmix_alpha": float(cfg.get("cutmix_alpha") or 0.0),
    }
    return {k: v for k, v in on.items() if v and v != "none"}


def fit_problem(cfg: Mapping[str, Any], input_shape: tuple[int, ...]) -> str | None:
    """Why `cfg` cannot augment examples shaped `input_shape` (None when it can)."""
    on = enabled(cfg)
    spatial = [k for k in SPATIAL_KEYS if k in on]
    name, shape = cfg.get("name", "?"), "(" + ", ".join(map(str, input_shape)) + ")"
    if spatial and len(input_shape) != 3:
        return (
            f"augment={name} ({', '.join(f'{k}={on[k]}' for k in spatial)}) needs images shaped "
            f"(C, H, W); the data's examples are {shape}: 2-D crops, flips, erasing "
            "and image policies do not apply to sequences or flat features (augment=none, or "
            "augment=mixup, which mixes inputs of any shape)"
        )
    if len(input_shape) == 3:
        side = min(input_shape[1:])
        if on.get("cutout", 0) > side:
            return f"augment.cutout={on['cutout']} is larger than the {side}-pixel images"
        if on.get("policy") and input_shape[0] not in (1, 3):
            return f"augment.policy={on['policy']} needs 1 or 3 channels, not {input_shape[0]}"
    if on.get("policy") and on["policy"] not in POLICIES:
        return f"augment.policy={on['policy']!r}: choose one of {list(POLICIES)}"
    return None


def problems(plain: dict[str, Any]) -> list[str]:
    """Every problem of the `augment` node, and an augmentation the data cannot take."""
    node = plain.get("augment")
    if node is None:
        return []
    if not isinstance(node, dict):
        return [f"augment={node!r} is invalid: expected an option of conf/augment"]
    out = []
    for key, value in node.items():
        check = AUGMENT.get(key)
        if check is None:
            out.append(f"augment.{key} is not a setting; its settings are {sorted(AUGMENT)}")
        elif (allowed := check(value)) is not None:
            out.append(f"augment.{key}={value!r} is invalid: expected {allowed}")
    data = plain.get("data") or {}
    if not out and data.get("_target_") in SEQUENCE_DATA:
        problem = fit_problem(node, ("C", "L"))
        out += [f"{problem} (data={data.get('name')})"] if problem else []
    return out
