"""The rules of image and table data, data loading and augmentation: the settings tables of
`data=images`, `data=cifar10`, `data=table` and the `augment` group, the cross-key rules that refuse
an augmentation the data cannot take or a table's contradictory columns, and the checks of what a
table holds (given a summary of its columns: this module reads no file), before anything runs.
Hooked into config/groups.py and config/schema.py; data/tables.py applies the table checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
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


def _columns(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(isinstance(c, str) and c for c in v)
    return None if ok else "a non-empty list of column names"


def _target_columns(v: Any) -> str | None:
    ok = (isinstance(v, str) and v) or _columns(v) is None
    return None if ok else "a column name, or a non-empty list of them"


TABLE_TARGET = "tunelab.data.tables.table"
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}  # extension -> reader
TABLE: dict[str, r.Check] = {
    "path": r.text,
    "test_path": r.optional_text,
    "target": _target_columns,
    "features": r.optional(_columns),
    "categorical": r.texts,
    "val_fraction": r.OPEN_UNIT,
    "test_fraction": r.OPEN_UNIT,
    "split_seed": SEED,
    "standardize": r.boolean,
}
DATA: dict[str, dict[str, r.Check]] = {
    "tunelab.data.images.images": {**IMAGE_DATA, "test_fraction": r.OPEN_UNIT},
    "tunelab.data.sources.cifar10": IMAGE_DATA,
    TABLE_TARGET: TABLE,
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

# Data whose examples are sequences (C, L), a table's rows (1, F) too: no 2-D augmentation fits.
SEQUENCE_DATA = ("tunelab.data.sources.mnist1d", "tunelab.data.sources.synthetic", TABLE_TARGET)


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
    """Every problem of the `augment` node, an augmentation the data cannot take, and the
    contradictions of a `data=table` node."""
    data, node = plain.get("data"), plain.get("augment")
    out = table_node_problems(data) if isinstance(data, dict) else []
    if node is None:
        return out
    if not isinstance(node, dict):
        return [*out, f"augment={node!r} is invalid: expected an option of conf/augment"]
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


def target_list(target: str | Sequence[str]) -> list[str]:
    """data.target as a list of columns (one name or several)."""
    return [target] if isinstance(target, str) else list(target)


def table_node_problems(node: Mapping[str, Any]) -> list[str]:
    """What a `data=table` node gets wrong on its own, before any file is read: no target, a
    file format tunelab cannot read, a missing test file, a column both target and feature."""
    if node.get("_target_") != TABLE_TARGET:
        return []
    out = []
    if node.get("target") == "???":
        out.append("data.target is required for data=table: give data.target=<column> (or a list)")
    for key in ("path", "test_path"):
        value = node.get(key)
        if not isinstance(value, str) or value in ("", "???"):
            continue
        if Path(value).suffix.lower() not in TABLE_FORMATS:
            out.append(
                f"data.{key}={value!r}: unknown extension {Path(value).suffix!r}: a table is "
                f"one of {', '.join(TABLE_FORMATS)}"
            )
        elif key == "test_path" and not Path(value).expanduser().is_file():
            out.append(f"data.test_path={value!r}: no such file")
    checks = {k: TABLE[k](node.get(k)) for k in ("target", "features", "categorical")}
    if any(checks.values()) or node.get("target") == "???":
        return out  # the value rules name them
    targets, features = target_list(node["target"]), node.get("features")
    categorical = list(node.get("categorical") or [])
    for col in targets:
        if features is not None and col in features:
            out.append(f"data.target column {col!r} is also in data.features: drop it there")
        if col in categorical:
            out.append(f"data.target column {col!r} is in data.categorical: drop it there")
    for col in categorical:
        if features is not None and col not in features and col not in targets:
            out.append(f"data.categorical column {col!r} is not in data.features: add it there")
    return out


def _shown(columns: Sequence[str], limit: int = 20) -> str:
    more = f", … ({len(columns)} in all)" if len(columns) > limit else ""
    return ", ".join(repr(c) for c in columns[:limit]) + more


def table_problems(
    where: str,
    kinds: Mapping[str, str],
    nans: Mapping[str, int],
    rows: int,
    *,
    target: str | Sequence[str],
    features: Sequence[str] | None,
    categorical: Sequence[str],
    min_rows: int,
) -> list[str]:
    """Every problem of one table file, from a summary of it: `kinds` maps each column to `int`,
    `float`, `bool` or `text`, `nans` to its count of missing values. `where` names the file's
    key (`data.path='x.csv'`), which starts every message."""
    out = []
    if rows == 0:
        out.append(f"{where}: the table has no rows")
    elif rows < min_rows:
        out.append(f"{where}: {rows} rows are too few to carve its splits (at least {min_rows})")
    targets = target_list(target)
    named = [("data.target", targets), ("data.features", features or [])]
    for key, cols in [*named, ("data.categorical", categorical)]:
        for col in cols:
            if col not in kinds:
                out.append(
                    f"{where}: {key} column {col!r} is not in the table (its columns: "
                    f"{_shown(list(kinds))})"
                )
    chosen = [c for c in (features or kinds) if c in kinds and c not in targets]
    if not chosen:
        out.append(f"{where}: no feature columns are left beside the target")
    for col in chosen:
        if kinds[col] == "text" and col not in categorical:
            out.append(
                f"{where}: column {col!r} is text: declare it in data.categorical or drop it "
                "from data.features"
            )
    present = [c for c in targets if c in kinds]
    mix = {kinds[c] for c in present} if len(targets) > 1 else set()
    if "text" in mix or ("float" in mix and len(mix) > 1):
        out.append(
            f"{where}: data.target columns {_shown(present)} are of kinds "
            f"{[kinds[c] for c in present]}: a list of targets is either 0/1 label columns "
            "(multi-label) or float columns (multi-output regression)"
        )
    for col in [*chosen, *present]:
        if nans.get(col):
            out.append(
                f"{where}: column {col!r} has {nans[col]} missing values (NaN): fill or drop "
                "them first (no value is imputed)"
            )
    return out
