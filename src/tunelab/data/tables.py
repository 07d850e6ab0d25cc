"""CSV, TSV and Parquet tables as Splits (`data=table`): named feature and target columns, text
columns one-hot encoded when declared categorical. Read with pandas (pyarrow for Parquet): no
code in a file runs, nothing is unpickled. The checks are config/data_rules.py's, applied here
to a summary of each file, so a bad table is refused before any run exists."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from tunelab.config import ConfigError
from tunelab.config.data_rules import (
    TABLE,
    TABLE_FORMATS,
    TABLE_TARGET,
    table_node_problems,
    table_problems,
    target_list,
)
from tunelab.data.images import TEST_SEED
from tunelab.data.manifest import file_sha256
from tunelab.data.splits import Splits, make_splits

log = logging.getLogger(__name__)


def read_table(file: Path) -> pd.DataFrame:
    """The table in `file`, by its extension: .csv, .tsv (pandas) or .parquet (pyarrow)."""
    kind = TABLE_FORMATS[file.suffix.lower()]
    if kind == "parquet":
        return pd.read_parquet(file, engine="pyarrow")
    return pd.read_csv(file, sep="\t" if kind == "tsv" else ",", low_memory=False)


def column_kind(column: pd.Series) -> str:
    """`bool`, `int`, `float` or `text` (anything else: strings, dates, categories)."""
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return "text"


@dataclass
class TableArrays:
    """What a table becomes before the splits: float32 inputs, targets, and what was chosen."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    float_targets: bool
    scaled: np.ndarray  # per input column: standardised (numeric) or not (one-hot)
    digest: str
    provenance: dict = field(default_factory=dict)


def table(
    *,
    path: str,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    test_path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    standardize: bool = True,
) -> Splits:
    """A table's rows as Splits of (1, F) examples: the test split from `test_path`, else carved
    with a fixed seed; numeric features standardised with the training split's per-column
    statistics (one-hot columns are left 0/1)."""
    a = table_arrays(
        path=path,
        target=target,
        features=features,
        categorical=categorical,
        test_path=test_path,
        test_fraction=test_fraction,
    )
    splits = make_splits(
        a.x[:, None],  # (N, F) -> (N, 1, F), as data=npz shapes its arrays: every model takes them
        a.y,
        a.x_test[:, None],
        a.y_test,
        name=Path(path).stem,
        val_fraction=val_fraction,
        split_seed=split_seed,
        standardize=False,
        float_targets=a.float_targets,
    )
    if standardize and a.scaled.any():
        cols = torch.as_tensor(np.flatnonzero(a.scaled))
        mean = splits.x_train[:, 0, cols].mean(0)
        std = splits.x_train[:, 0, cols].std(0, unbiased=False)
        std[std == 0] = 1.0
        for x in (splits.x_train, splits.x_val, splits.x_test):
            x[:, 0, cols] = (x[:, 0, cols] - mean) / std
    splits.digest = a.digest
    splits.provenance = {**a.provenance, "standardized": bool(standardize and a.scaled.any())}
    return splits


class TableError(ConfigError):
    """A table tunelab cannot train on; `problems` lists every reason, each naming file and column."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid data:\n  " + "\n  ".join(problems))
        self.problems = problems


def problems(node: Mapping[str, Any]) -> list[str]:
    """Every problem of a `data=table` node's files, without building a tensor (the up-front
    check `build.file_problems` runs before Hydra creates a directory)."""
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    keys = ("path", "target", "features", "categorical", "test_path", "test_fraction")
    try:
        table_arrays(**{k: plain[k] for k in keys if plain.get(k) is not None})
    except TableError as exc:
        return exc.problems
    return []


def _refuse(found: list[str]) -> None:
    if found:
        raise TableError(found)


def table_arrays(
    *,
    path: str,
    target: str | Sequence[str],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    test_path: str | None = None,
    test_fraction: float = 0.2,
) -> TableArrays:
    """Read, check and encode the table(s); TableError lists every problem at once."""
    target = target if isinstance(target, str) else [str(t) for t in target]  # a ListConfig too
    features = None if features is None else [str(f) for f in features]
    categorical = [str(c) for c in categorical]
    node = {"_target_": TABLE_TARGET, "path": path, "test_path": test_path}
    node |= {"target": target, "features": features, "categorical": categorical}
    found = [  # what validate() says of these keys, for a caller that did not run it
        f"data.{k}={node[k]!r} is invalid: expected {allowed}"
        for k in ("target", "features", "categorical")
        if (allowed := TABLE[k](node[k])) is not None
    ]
    found += table_node_problems(node)
    files = {"path": Path(path).expanduser()}
    if test_path:
        files["test_path"] = Path(test_path).expanduser()
    found += [f"data.{k}={str(f)!r}: no such file" for k, f in files.items() if not f.is_file()]
    _refuse(found)
    frames = {}
    for key, file in files.items():
        try:
            frames[key] = read_table(file)
        except Exception as exc:  # pandas' and pyarrow's parse errors, a file that is not text
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            found.append(f"data.{key}={str(file)!r}: cannot be read as a table ({first})")
    _refuse(found)
    for key, frame in frames.items():
        kinds = {str(c): column_kind(frame[c]) for c in frame.columns}
        nans = {str(c): int(n) for c, n in frame.isna().sum().items()}
        found += table_problems(
            f"data.{key}={str(files[key])!r}",
            kinds,
            nans,
            len(frame),
            target=target,
            features=features,
            categorical=categorical,
            min_rows=1 if key == "test_path" else (2 if test_path else 3),
        )
    _refuse(found)
    return _encode(frames, files, target_list(target), features, categorical, test_fraction)


def _encode(
    frames: dict[str, pd.DataFrame],
    files: dict[str, Path],
    targets: list[str],
    features: Sequence[str] | None,
    categorical: list[str],
    test_fraction: float,
) -> TableArrays:
    train = frames["path"]
    train.columns = [str(c) for c in train.columns]
    chosen = [c for c in (features or train.columns) if c not in targets]
    carved = "test_path" not in frames
    if carved:  # a fixed seed, as image folders carve theirs: the test rows never move
        order = np.random.default_rng(TEST_SEED).permutation(len(train))
        n_test = max(1, int(round(test_fraction * len(train))))
        train, test = train.iloc[order[n_test:]], train.iloc[order[:n_test]]
    else:
        test = frames["test_path"]
        test.columns = [str(c) for c in test.columns]
    categories = {c: _sorted_unique(train[c]) for c in categorical if c in chosen}
    x, scaled, _ = _inputs(train, chosen, categories)
    x_test, _, unseen = _inputs(test, chosen, categories)
    for col, count in unseen.items():
        log.warning(
            "data.table: %d test rows have a %r category unseen in training: encoded as zeros",
            count,
            col,
        )
    y, y_test, kind, labels = _targets(train, test, targets, files)
    digest = hashlib.sha256()
    for f in files.values():
        digest.update(file_sha256(f).encode())
    columns = {"features": chosen, "target": targets, "categorical": sorted(categories)}
    digest.update(json.dumps(columns).encode())
    provenance = {
        "format": TABLE_FORMATS[files["path"].suffix.lower()],
        "rows": len(frames["path"]) + (0 if carved else len(frames["test_path"])),
        "columns": int(frames["path"].shape[1]),
        "features": chosen,
        "inputs": int(x.shape[1]),
        "target": targets[0] if len(targets) == 1 else targets,
        "target_kind": kind,
        "carved": ["test"] if carved else [],
        "categories": categories,
        "unseen_test_categories": unseen,
    }
    if labels is not None:
        provenance["labels"] = labels  # class id i is labels[i]
    return TableArrays(
        x, y, x_test, y_test, kind != "classes", scaled, digest.hexdigest(), provenance
    )


def _sorted_unique(column: pd.Series) -> list:
    values = pd.unique(column).tolist()
    try:
        return sorted(values)
    except TypeError:  # mixed types in one column
        return sorted(values, key=str)


def _inputs(
    frame: pd.DataFrame, chosen: list[str], categories: dict[str, list]
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(N, F) float32 inputs in the order of `chosen`, each categorical column replaced by its
    one-hot columns (an unseen category: all zeros, counted); which columns are numeric."""
    blocks, scaled, unseen = [], [], {}
    for col in chosen:
        if col in categories:
            codes = pd.Categorical(frame[col], categories=categories[col]).codes
            blocks.append(np.eye(len(categories[col]) + 1, dtype=np.float32)[codes][:, :-1])
            scaled += [False] * len(categories[col])
            if (missing := int((codes < 0).sum())) > 0:
                unseen[col] = missing
        else:
            blocks.append(frame[col].to_numpy(dtype=np.float32, copy=True)[:, None])
            scaled.append(True)
    return np.concatenate(blocks, axis=1), np.asarray(scaled), unseen


def _targets(
    train: pd.DataFrame, test: pd.DataFrame, targets: list[str], files: dict[str, Path]
) -> tuple[np.ndarray, np.ndarray, str, list | None]:
    """(y, y_test, kind, labels): integer class ids as they are, text or bool labels mapped from
    the sorted training values (`labels`), float values for regression, 0/1 columns multi-hot."""
    where = f"data.{'test_path' if 'test_path' in files else 'path'}"
    if len(targets) > 1:
        y, y_test = (f[targets].to_numpy() for f in (train, test))
        if train[targets[0]].dtype.kind == "f":
            return y.astype(np.float32), y_test.astype(np.float32), "regression", None
        bad = sorted({int(v) for v in np.unique(np.concatenate([y, y_test]))} - {0, 1})
        if bad:
            _refuse(
                [
                    f"data.target columns {targets} hold {bad[:5]}: label columns of a list target"
                    " hold 0 or 1"
                ]
            )
        return y.astype(np.float32), y_test.astype(np.float32), "multilabel", None
    col = targets[0]
    kind = column_kind(train[col])
    if kind == "float":
        y, y_test = (f[col].to_numpy(dtype=np.float32, copy=True) for f in (train, test))
        return y, y_test, "regression", None
    if kind == "int":
        y, y_test = (f[col].to_numpy(dtype=np.int64, copy=True) for f in (train, test))
        if min(y.min(), y_test.min()) < 0:
            _refuse(
                [
                    f"data.target column {col!r} holds negative integers: integer targets are "
                    "class ids 0, 1, …"
                ]
            )
        return y, y_test, "classes", None
    labels = _sorted_unique(train[col])
    y, y_test = (pd.Categorical(f[col], categories=labels).codes for f in (train, test))
    if (y_test < 0).any():
        new = _sorted_unique(test[col][y_test < 0])
        _refuse(
            [
                f"{where}: data.target column {col!r} has values the training rows lack "
                f"({new[:5]}): a class must have training examples"
            ]
        )
    return y.astype(np.int64), y_test.astype(np.int64), "classes", labels
