"""The findings' record and the conclusions' declared verdicts, on small generated fixtures: the
record round-trips every run as data and exports byte-identically; a file that is not a record is
refused; a conclusion whose declared verdicts differ from the document's is caught. (The whole
document regenerated from a record is tests/test_findings.py's, on the reduced-budget runs.)"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tunelab.findings import record
from tunelab.findings import spec as findings_spec
from tunelab.findings.record import RecordedRun, RecordError, RecordReader, RunData, RunInfo
from tunelab.findings.spec import SpecError
from tunelab.findings.verdict import drifted
from tunelab.tags import CELL, PARENT_RUN_ID, ROLE, STUDY, Role

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "findings" / "claims.yaml"
DOCUMENT = ROOT / "docs" / "FINDINGS.md"


def _run(rid: str, start: int, tags: dict, metrics: dict, status: str = "FINISHED") -> RecordedRun:
    info = RunInfo(rid, "7", f"run {rid[:4]}", status, start, start + 5000)
    params = {"optimizer.lr": "0.1", "trainer.max_epochs": "3", "model.name": "cnn"}
    return RecordedRun(info, RunData(dict(tags), params, dict(metrics)))


class FakeStore:
    """The findings' view of an MLflow store, made of generated runs (what `export` reads)."""

    def __init__(self) -> None:
        study = "a" * 32
        self.runs = [
            _run(study, 1000, {ROLE: Role.STUDY, STUDY: "l2-mnist1d", "mlflow.user": "x"}, {}),
            *(
                _run(
                    f"{i:x}" * 32,
                    2000 + 10 * i,
                    {ROLE: Role.CONFIRM, STUDY: "l2-mnist1d", CELL: "0.01", PARENT_RUN_ID: study},
                    {
                        "val/acc": 0.5 + i / 100,
                        "test/acc": 0.6,
                        "val/loss": 1.0,
                        "val/recall/2": 0.4,
                        "val/acc_class_3": 0.3,
                    },
                )
                for i in (1, 2, 3)
            ),
            _run("f" * 32, 900, {ROLE: Role.STUDY, STUDY: "l2-mnist1d"}, {}, status="FAILED"),
        ]
        self.summary = b'{"figures": {"isolation": "iso.png", "other": "x.png"}}'
        self.experiment_name = "findings-tiny"
        self.store = SimpleNamespace(metric_history=self.history)

    def history(self, run_id: str, key: str) -> list:
        return [SimpleNamespace(step=e, value=0.1 * e + len(key)) for e in (2, 0, 1)]

    def search(self, tags: dict, finished: bool = False) -> list:
        return list(reversed(self.runs))

    def artifact(self, run_id: str, path: str) -> bytes | None:
        return {"summary.json": self.summary, "figures/iso.png": b"\x89PNG fake"}.get(path)


def test_the_record_keeps_every_run_as_data_and_answers_as_the_store_does(tmp_path):
    fake = FakeStore()
    path = tmp_path / "record.parquet"
    assert record.export(fake, path) == 5
    kept = RecordReader(path, "findings-tiny")
    assert kept.experiment_name == "findings-tiny"
    assert set(kept.runs) == {r.info.run_id for r in fake.runs}
    for r in fake.runs:
        got = kept.run(r.info.run_id)
        assert got.info == r.info
        assert got.data.params == r.data.params and got.data.metrics == r.data.metrics
        assert got.data.tags == {k: v for k, v in r.data.tags.items() if k != "mlflow.user"}
    confirm = kept.run("1" * 32)
    want = {k: [(0, len(k)), (1, 0.1 + len(k)), (2, 0.2 + len(k))] for k in ("val/acc", "val/loss")}
    assert confirm.history == want  # the per-class curves are left out; their final values kept
    assert confirm.data.metrics["val/acc_class_3"] == 0.3
    assert kept.artifact("a" * 32, "summary.json") == fake.summary
    assert kept.artifact("a" * 32, "figures/iso.png") == b"\x89PNG fake"
    assert kept.artifact("a" * 32, "figures/x.png") is None  # figures the document does not copy
    # the questions the document asks: newest first, finished only when asked, children by parent
    assert kept.require(Role.STUDY, "l2-mnist1d").info.run_id == "a" * 32
    newest = [r.info.run_id for r in kept.search({ROLE: Role.CONFIRM})]
    assert newest == ["3" * 32, "2" * 32, "1" * 32]
    assert len(kept.children(kept.run("a" * 32))) == 3
    assert kept.seconds_by_cell("l2-mnist1d") == {"0.01": [5.0, 5.0, 5.0]}
    assert kept.training("l2-mnist1d") == "cnn model, 3 epochs per run"


def test_the_same_store_exports_to_the_same_bytes(tmp_path):
    fake = FakeStore()
    record.export(fake, tmp_path / "one.parquet")
    fake.runs.reverse()  # the store answering in another order changes nothing
    record.export(fake, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


def test_a_file_that_is_not_a_record_or_of_another_experiment_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "x.json").write_text('{"runs": []}')
    with pytest.raises(RecordError, match="cannot read the record"):
        RecordReader(tmp_path / "x.json")
    pq.write_table(pa.table({"run_id": ["a"], "value": [1.0]}), tmp_path / "other.parquet")
    with pytest.raises(RecordError, match="is not a findings record"):
        RecordReader(tmp_path / "other.parquet")
    record.export(FakeStore(), tmp_path / "record.parquet")
    with pytest.raises(RecordError, match="holds experiment 'findings-tiny', this budget's is 'x'"):
        RecordReader(tmp_path / "record.parquet", "x")


# ---- the verdicts each conclusion rests on ----------------------------------------------------


def test_a_conclusion_whose_verdicts_changed_is_named_with_what_changed():
    claim = next(c for c in findings_spec.load(CLAIMS).claims if c.id == "l2")
    same = dict(claim.rests_on)
    assert drifted(claim, same) == []
    changed = {**same, "digits": ["not resolved", "supported"]}
    assert drifted(claim, changed) == [
        "digits `0.01` − `1e-05`: written for not resolved, the runs give supported"
    ]


def _glance(text: str) -> dict[tuple[str, str], list[str]]:
    """The verdict column of the document's table at a glance, per claim title and dataset."""
    head = text.split("## Verdicts at a glance", 1)[1].split("\n## ", 1)[0]
    out: dict[tuple[str, str], list[str]] = {}
    for row in head.splitlines()[4:]:
        if row.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            out.setdefault((cells[0], cells[1]), []).append(cells[-1])
    return out


def test_every_conclusion_declares_the_verdicts_the_document_gives():
    """Fails when a re-run changes a verdict a conclusion rests on (the document is regenerated
    from the runs; claims.yaml's rests_on and its prose must then be rewritten)."""
    from tunelab.findings.study_section import DATA

    glance = _glance(DOCUMENT.read_text())
    checked = 0
    for claim in findings_spec.load(CLAIMS).claims:
        for d, words in claim.rests_on.items():
            assert glance[(claim.title, DATA[d])] == words, (claim.id, d)
            checked += 1
    assert checked == 13  # every study and search claim with checks, on each of its datasets


def _claims_with(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(CLAIMS.read_text())
    change(raw)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["claims"][2].pop("rests_on"), "claim l2: its conclusion names no verdicts"),
        (lambda r: r["claims"][2]["rests_on"].pop("digits"), "names no verdicts it rests on"),
        (lambda r: r["claims"][2]["rests_on"]["digits"].pop(), "rests_on.digits must be 2"),
        (lambda r: r["claims"][2]["rests_on"].update(digits=["fine", "fine"]), "got ['fine'"),
    ],
)
def test_a_conclusion_without_its_verdicts_is_refused(tmp_path, change, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        findings_spec.load(_claims_with(tmp_path, change))


# ---- what each claim is judged on -----------------------------------------------------------


class StudyStore:
    """One finished study, as the findings read it: two cells, `fast`'s runs still improving."""

    def __init__(self) -> None:
        stats = {"mean": 0.9, "std": 0.01, "ci_low": 0.88, "ci_high": 0.92}
        flags = {
            "fast": {"1": ["still_improving"], "2": ["still_improving"], "3": []},
            "slow": {"1": [], "2": [], "3": []},
        }
        self.doc = {
            "judged": {
                "test/acc": {
                    "pairs": [
                        {
                            "a": "fast",
                            "b": "slow",
                            "diff": 0.02,
                            "low": 0.01,
                            "high": 0.03,
                            "resolved": True,
                            "n": 3,
                        }
                    ],
                    "top_set": ["fast"],
                    "power": {"sd": float("nan")},
                    "metric": "test/acc",
                }
            },
            "top_set": ["fast"],
            "seeds": [1, 2, 3],
            "n_trials": 2,
            "figures": {},
            "cells": [
                {
                    "cell": c,
                    "stats": {"test/acc": stats, "val/acc": stats},
                    "best_params": {},
                    "curve_flags": flags[c],
                    "mlflow_run_id": c * 8,
                    "confirm_runs": {},
                }
                for c in ("fast", "slow")
            ],
        }

    def require(self, kind, name):
        return SimpleNamespace(info=SimpleNamespace(run_id="s" * 32))

    def summary(self, run):
        return self.doc

    def training(self, name):
        return "cnn model, 8 epochs per run"

    def seconds_by_cell(self, name):
        return {}

    def span(self, run):
        return (0.0, 1.0)


@pytest.mark.parametrize("about", ["final_quality", "short_budget"])
def test_a_verdict_from_runs_still_improving_is_marked_in_its_section_and_at_a_glance(
    tmp_path, about
):
    from dataclasses import replace

    from tunelab.findings import study_section
    from tunelab.findings.spec import Check

    claim = next(c for c in findings_spec.load(CLAIMS).claims if c.id == "l2")
    claim = replace(claim, about=about, checks=[Check("fast", "slow", "higher")])
    part = study_section.study(StudyStore(), claim, "mnist1d", tmp_path, 0.01)
    (verdict,) = [x for x in part.lines if x.startswith("- `fast` − `slow`")]
    assert verdict.endswith("*Drawn from runs still improving (`fast` 2/3).*")
    judged = {"final_quality": "final quality", "short_budget": "short budget"}[about]
    assert part.glance == [
        [
            claim.title,
            "MNIST-1D",
            "`fast` − `slow`",
            "+2.00",
            "[+1.00, +3.00]",
            f"{judged}, runs still improving",
            "supported",
        ]
    ]
    assert (part.cells, part.improving, part.verdicts) == (2, 1, ["supported"])


def test_final_quality_claims_train_until_they_stop_improving_at_the_full_budget_only():
    spec = findings_spec.load(CLAIMS)
    stop = spec.budget("full").final_quality
    assert any(s.startswith("trainer.early_stopping.patience=") for s in stop)
    assert any(s.startswith("trainer.max_epochs=") for s in stop)
    about = {c.id: c.about for c in spec.claims}
    assert about["lr_momentum"] == about["search_methods"] == "short_budget"
    for job in spec.jobs("full"):
        assert (set(stop) <= set(job.overrides)) == (about[job.claim] == "final_quality"), job.name
    assert not any(set(stop) & set(j.overrides) for j in spec.jobs("reduced"))


def test_the_batch_size_study_gives_every_cell_the_same_number_of_optimizer_steps():
    study = yaml.safe_load((ROOT / "conf" / "study" / "batch_size.yaml").read_text())
    cells = study["hydra"]["sweeper"]["scientific"]["values"]
    epochs_per_batch = set()
    for name, overrides in cells.items():
        given = dict(o.split("=", 1) for o in overrides)
        assert given["trainer.batch_size"] == name
        epochs_per_batch.add(int(given["trainer.max_epochs"]) / int(name))  # steps ∝ epochs / batch
    assert len(cells) == 4 and len(epochs_per_batch) == 1
    for job in findings_spec.load(CLAIMS).jobs("reduced", ["batch_size"]):  # a token budget
        assert sum("trainer.max_epochs=1" in o for o in job.overrides) == 5, job.overrides
    claim = next(c for c in findings_spec.load(CLAIMS).claims if c.id == "batch_size")
    assert claim.note and "same number of optimizer steps" in claim.note


def test_a_claim_that_does_not_say_what_it_is_about_is_refused(tmp_path):
    path = _claims_with(tmp_path, lambda r: r["claims"][0].update(about="speed"))
    with pytest.raises(SpecError, match="claim lr_momentum: about must be one of"):
        findings_spec.load(path)
