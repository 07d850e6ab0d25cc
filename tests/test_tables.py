"""`data=table`: CSV and Parquet files with named feature and target columns train and record
what they are; categorical columns are one-hot encoded; a bad table is refused, naming file and
column, before anything exists. Fixtures are scikit-learn's wine, breast-cancer and diabetes sets
written with pandas, plus a text column."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_cfg, mlflow_runs, run_cli
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from tunelab.build import file_problems
from tunelab.config import ConfigError, validate
from tunelab.data.tables import table
from tunelab.run.api import run
from tunelab.run.context import RunContext

REGIONS = ["north", "south", "east", "west"]
SMALL = ["model=mlp", "model.width=16", "trainer.max_epochs=2", "trainer.batch_size=32"]


def wine_frame() -> pd.DataFrame:
    """Wine's 13 features, its integer class column `cultivar`, and a text column `region`."""
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    frame["region"] = np.random.default_rng(0).choice(REGIONS, len(frame))
    return frame


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tables")
    wine = wine_frame()
    wine.to_csv(root / "wine.csv", index=False)
    wine.to_csv(root / "wine.tsv", sep="\t", index=False)
    wine.to_parquet(root / "wine.parquet", index=False)
    cancer = load_breast_cancer(as_frame=True)
    frame = cancer.frame.drop(columns="target")
    frame["diagnosis"] = np.asarray(cancer.target_names)[cancer.target]  # malignant / benign
    frame.to_csv(root / "cancer.csv", index=False)
    load_diabetes(as_frame=True).frame.to_parquet(root / "diabetes.parquet", index=False)
    return {"root": root, "wine": wine}


def table_cfg(path, *overrides: str):
    return compose_cfg("data=table", f"data.path={path}", *SMALL, *overrides)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_table_trains_two_epochs_and_records_its_columns(files, kind, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    path = files["root"] / f"wine.{kind}"
    cfg = table_cfg(path, "data.target=cultivar", "data.categorical=[region]")
    result = run(cfg, RunContext(log_model=False))
    (r,) = mlflow_runs(workdir)
    assert r.info.status == "FINISHED" and result.metrics["epochs_run"] == 2
    assert result.metrics["test/acc"] > 0.5  # 3 classes: it learnt from the columns
    splits = table(path=str(path), target="cultivar", categorical=["region"])
    assert r.data.tags["data_digest"] == splits.digest
    (dataset,) = r.inputs.dataset_inputs
    profile = json.loads(dataset.dataset.profile)
    assert profile["format"] == kind and profile["rows"] == 178 and profile["columns"] == 15
    assert profile["features"] == [c for c in files["wine"].columns if c != "cultivar"]
    assert profile["target"] == "cultivar" and profile["target_kind"] == "classes"
    assert profile["categories"] == {"region": sorted(REGIONS)}
    assert profile["inputs"] == 13 + len(REGIONS) and profile["num_classes"] == 3


def test_csv_tsv_and_parquet_of_one_table_give_the_same_splits(files):
    a, b, c = (
        table(path=str(files["root"] / f"wine.{k}"), target="cultivar", categorical=["region"])
        for k in ("csv", "tsv", "parquet")
    )
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        for other in (b, c):
            assert torch.allclose(getattr(a, key), getattr(other, key)), key
    assert a.input_shape == (1, 17) and a.y_train.dtype == c.y_train.dtype == torch.int64
    assert len({a.digest, b.digest, c.digest}) == 3  # the digest is of the file's bytes


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_the_digest_follows_the_cells_and_the_columns_not_the_file_time(files, kind, tmp_path):
    path = tmp_path / f"wine.{kind}"
    write = pd.DataFrame.to_csv if kind == "csv" else pd.DataFrame.to_parquet
    wine = files["wine"].copy()
    write(wine, path, index=False)

    def digest(**columns) -> str:
        return table(path=str(path), target="cultivar", categorical=["region"], **columns).digest

    before = digest()
    os.utime(path, (1_000_000_000, 1_000_000_000))  # touched: same bytes
    assert digest() == before
    assert digest(features=["alcohol", "region"]) != before  # another column choice
    wine.loc[5, "alcohol"] += 0.5  # one cell
    write(wine, path, index=False)
    assert digest() != before


def test_a_categorical_column_is_one_hot_with_the_training_categories(files, tmp_path, caplog):
    train = files["wine"]
    test = train.iloc[:10].copy()
    test.loc[test.index[:3], "region"] = "atlantis"  # never seen in training
    test.to_csv(tmp_path / "test.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="tunelab.data.tables"):
        s = table(
            path=str(files["root"] / "wine.csv"),
            test_path=str(tmp_path / "test.csv"),
            target="cultivar",
            features=["alcohol", "region"],
            categorical=["region"],
        )
    onehot = s.x_test[:, 0, 1:].numpy()  # alcohol first, then east, north, south, west
    assert onehot.shape == (10, 4) and s.provenance["categories"]["region"] == sorted(REGIONS)
    assert (onehot[:3] == 0).all() and (onehot[3:].sum(1) == 1).all()
    expected = [sorted(REGIONS).index(v) for v in test["region"].iloc[3:]]
    assert onehot[3:].argmax(1).tolist() == expected
    assert s.provenance["unseen_test_categories"] == {"region": 3}
    assert "3 test rows have a 'region' category unseen in training" in caplog.text
    assert set(np.unique(s.x_train[:, 0, 1:].numpy())) == {0.0, 1.0}  # not standardised


def test_numeric_columns_are_standardised_with_the_training_rows(files):
    path = str(files["root"] / "wine.csv")
    s = table(path=path, target="cultivar", features=["alcohol", "proline"])
    x = s.x_train[:, 0].numpy()
    assert np.allclose(x.mean(0), 0, atol=1e-5) and np.allclose(x.std(0), 1, atol=1e-4)
    raw = table(path=path, target="cultivar", features=["alcohol", "proline"], standardize=False)
    rows = files["wine"][["alcohol", "proline"]].to_numpy(dtype=np.float32)
    assert {tuple(r) for r in raw.x_test[:, 0].numpy()} <= {tuple(r) for r in rows}


def test_text_labels_are_class_ids_in_sorted_order(files):
    s = table(path=str(files["root"] / "cancer.csv"), target="diagnosis")
    assert s.provenance["labels"] == ["benign", "malignant"] and s.num_classes == 2
    assert s.y_train.dtype == torch.int64
    malignant = (pd.read_csv(files["root"] / "cancer.csv")["diagnosis"] == "malignant").sum()
    n = sum(s.sizes().values())
    ones = int(s.y_train.sum() + s.y_val.sum() + s.y_test.sum())
    assert (n, ones) == (569, malignant)


def test_a_float_target_gives_float_targets(files):
    """Regression arrays (task=regression trains them); a list of float columns: (N, k)."""
    path = str(files["root"] / "diabetes.parquet")
    s = table(path=path, target="target")
    assert s.y_train.dtype == s.y_test.dtype == torch.float32
    assert s.y_train.shape == (len(s.y_train),) and s.num_classes == 1
    assert s.provenance["target_kind"] == "regression"
    assert float(s.y_train.std()) > 10  # the values themselves, not class ids
    two = table(path=path, target=["target", "bmi"])
    assert two.y_train.shape == (len(two.y_train), 2) and two.num_classes == 2
    assert "bmi" not in two.provenance["features"]


def test_a_list_of_label_columns_is_multi_hot(files, tmp_path):
    frame = files["wine"].assign(a=lambda f: (f.cultivar == 0).astype(int), b=lambda f: f.hue > 1)
    frame.to_csv(tmp_path / "multi.csv", index=False)
    s = table(path=str(tmp_path / "multi.csv"), target=["a", "b"], categorical=["region"])
    assert s.provenance["target_kind"] == "multilabel" and s.y_train.shape[1] == 2
    assert set(np.unique(s.y_train.numpy())) == {0.0, 1.0}
    frame.assign(a=frame.cultivar).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(
        ConfigError, match=r"hold \[2\]: label columns of a list target hold 0 or 1"
    ):
        table(path=str(tmp_path / "bad.csv"), target=["a", "b"], categorical=["region"])


def _bad_tables(root) -> dict:
    """name -> (overrides after data.path, the words the refusal must hold)."""
    wine = wine_frame()
    wine.iloc[:0].to_csv(root / "empty.csv", index=False)
    holes = wine.copy()
    holes.loc[[3, 7, 9], "alcohol"] = np.nan
    holes.loc[[4], "cultivar"] = np.nan
    holes.to_parquet(root / "holes.parquet", index=False)
    wine.to_csv(root / "wine.csv", index=False)
    (root / "wine.xlsx").write_text("not a table")
    csv = root / "wine.csv"
    return {
        "missing file": (root / "nosuch.csv", ["data.target=cultivar"], "no such file"),
        "missing test file": (
            csv,
            ["data.target=cultivar", f"data.test_path={root / 'nosuch.csv'}"],
            "no such file",
        ),
        "unknown extension": (root / "wine.xlsx", ["data.target=cultivar"], "unknown extension"),
        "missing target": (
            csv,
            ["data.target=quality", "data.categorical=[region]"],
            f"data.path='{csv}': data.target column 'quality' is not in the table",
        ),
        "missing feature": (
            csv,
            ["data.target=cultivar", "data.features=[alcohol,colour]"],
            f"data.path='{csv}': data.features column 'colour' is not in the table",
        ),
        "text column": (
            csv,
            ["data.target=cultivar"],
            f"data.path='{csv}': column 'region' is text: declare it in data.categorical or "
            "drop it from data.features",
        ),
        "NaN in a feature": (
            root / "holes.parquet",
            ["data.target=cultivar", "data.categorical=[region]"],
            "column 'alcohol' has 3 missing values (NaN)",
        ),
        "NaN in the target": (
            root / "holes.parquet",
            ["data.target=cultivar", "data.categorical=[region]"],
            "column 'cultivar' has 1 missing values (NaN)",
        ),
        "empty table": (
            root / "empty.csv",
            ["data.target=cultivar", "data.categorical=[region]"],
            f"data.path='{root / 'empty.csv'}': the table has no rows",
        ),
        "target among features": (
            csv,
            ["data.target=cultivar", "data.features=[alcohol,cultivar]"],
            "data.target column 'cultivar' is also in data.features",
        ),
        "categorical outside features": (
            csv,
            ["data.target=cultivar", "data.features=[alcohol]", "data.categorical=[region]"],
            "data.categorical column 'region' is not in data.features",
        ),
    }


@pytest.fixture(scope="module")
def bad_tables(tmp_path_factory) -> dict:
    return _bad_tables(tmp_path_factory.mktemp("bad"))


CASES = [
    "missing file",
    "missing test file",
    "unknown extension",
    "missing target",
    "missing feature",
    "text column",
    "NaN in a feature",
    "NaN in the target",
    "empty table",
    "target among features",
    "categorical outside features",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_table_is_refused_at_validation_naming_file_and_column(bad_tables, case):
    path, overrides, needle = bad_tables[case]
    with pytest.raises(ConfigError) as err:
        validate(table_cfg(path, *overrides), check_files=file_problems)
    assert needle in str(err.value)


def test_a_bad_table_through_the_cli_leaves_no_trace_and_names_every_problem(bad_tables, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path, _, _ = bad_tables["NaN in a feature"]
    proc = run_cli(
        "data=table", f"data.path={path}", "data.target=cultivar", *SMALL, cwd=work, timeout=300
    )
    assert proc.returncode != 0
    for needle in (
        f"data.path='{path}': column 'region' is text",
        "column 'alcohol' has 3 missing values",
        "column 'cultivar' has 1 missing values",
    ):
        assert needle in proc.stderr, proc.stderr[-2000:]
    assert list(work.iterdir()) == []  # no outputs/, mlflow.db, mlruns/ or checkpoints/


def test_a_bad_table_stops_a_run_before_any_side_effect(bad_tables, in_tmp):
    """`api.run` (sweeps, studies, the pipeline) loads the table before it records anything."""
    path, overrides, needle = bad_tables["text column"]
    with pytest.raises(ConfigError, match="column 'region' is text"):
        run(table_cfg(path, *overrides), RunContext(log_model=False))
    assert list(in_tmp.iterdir()) == []


def test_an_image_augmentation_on_a_table_is_refused_at_validation(files):
    cfg = table_cfg(files["root"] / "wine.csv", "data.target=cultivar", "augment=standard")
    with pytest.raises(ConfigError, match=r"augment=standard .* needs images shaped \(C, H, W\)"):
        validate(cfg)
