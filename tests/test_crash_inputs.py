"""Bad data files are rejected before any side effect (no run, no directory, no checkpoint), with
the key, the value and what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg, run_cli

from tunelab.build import file_problems
from tunelab.config import ConfigError, validate


def arrays(n: int = 64, features: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(n, features)).astype(np.float32),
        "y_train": rng.integers(0, 3, size=n),
        "x_test": rng.normal(size=(n // 2, features)).astype(np.float32),
        "y_test": rng.integers(0, 3, size=n // 2),
    }


def with_nan(a):
    a["x_train"][5, 3] = np.nan
    return a


def one_dimensional(a):
    a["x_train"], a["x_test"] = a["x_train"][:, 0], a["x_test"][:, 0]
    return a


def features_differ(a):
    a["x_test"] = a["x_test"][:, :5]
    return a


def labels_too_short(a):
    a["y_train"] = a["y_train"][:-1]
    return a


def negative_label(a):
    a["y_test"][0] = -1
    return a


def no_test_split(a):
    del a["x_test"]
    return a


BAD = [
    (with_nan, "train inputs contain 1 NaN/Inf values"),
    (one_dimensional, "train inputs have shape (64,)"),
    (features_differ, "differ in shape"),
    (labels_too_short, "train labels have shape (63,): expected (64,)"),
    (negative_label, "test labels must be >= 0"),
    (no_test_split, "lacks arrays ['x_test']"),
]


@pytest.mark.parametrize(("damage", "needle"), BAD, ids=[b[0].__name__ for b in BAD])
def test_a_bad_data_file_is_rejected_at_validation(tmp_path, damage, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **damage(arrays()))
    with pytest.raises(ConfigError) as err:
        validate(
            compose_cfg("data=npz", f"data.path={path}", "model=mlp"), check_files=file_problems
        )
    assert f"data.path='{path}'" in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize(("damage", "needle"), BAD[:2], ids=[b[0].__name__ for b in BAD[:2]])
def test_the_cli_leaves_no_trace_of_a_bad_data_file(tmp_path, damage, needle):
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "bad.npz"
    np.savez(path, **damage(arrays()))
    proc = run_cli("data=npz", f"data.path={path}", "model=mlp", cwd=work, timeout=300)
    assert proc.returncode != 0
    assert needle in proc.stderr and f"data.path='{path}'" in proc.stderr, proc.stderr[-2000:]
    assert list(work.iterdir()) == []  # no outputs/, mlflow.db, mlruns/ or checkpoints/


def test_a_good_data_file_passes(tmp_path):
    path = tmp_path / "good.npz"
    np.savez(path, **arrays())
    validate(compose_cfg("data=npz", f"data.path={path}", "model=mlp"), check_files=file_problems)
