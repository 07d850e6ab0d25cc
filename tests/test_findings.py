"""docs/FINDINGS.md regenerates from the MLflow store: the whole document at the reduced budget in
one command (every claim, every dataset), its tables parse, its figures are images, every run id it
cites is in the store, and writing it again from the same store gives the same text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.findings import spec as findings_spec
from tunelab.findings.spec import Check, SpecError
from tunelab.findings.verdict import judge

# the reduced findings run: built once, on one worker; 25 studies take minutes on 2 busy cores
pytestmark = [pytest.mark.xdist_group("findings"), pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "findings" / "claims.yaml"
RUN_ID = re.compile(r"`([0-9a-f]{32})`")


def tunelab(*args: str, cwd: Path, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "tunelab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# ---- claims.yaml ---------------------------------------------------------------------------


def test_the_shipped_claims_cover_the_issue_list_on_both_datasets_where_about_images():
    spec = findings_spec.load(CLAIMS)
    by_id = {c.id: c for c in spec.claims}
    for study in ("lr_momentum", "schedules", "l2", "optimizer_comparison", "batch_size",
                  "dropout", "seed_audit"):  # fmt: skip
        assert by_id[study].study == study
        assert (ROOT / "conf" / "study" / f"{study}.yaml").is_file()
        assert by_id[study].datasets == ["mnist1d", "digits"]
    assert by_id["search_methods"].kind == "search"
    assert {m.name for m in by_id["search_methods"].methods} >= {"grid", "random", "tpe", "line"}
    assert {"full", "reduced"} <= set(spec.budgets)
    full = spec.jobs("full")
    assert len({j.name for j in full}) == len(full)  # every study and sweep has its own name
    assert all("hydra.sweeper.seeds=10" in j.overrides for j in full if j.claim == "dropout")


def _write(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(CLAIMS.read_text())
    change(raw)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["claims"][0]["checks"][0].update(expect="bigger"), "expect 'bigger'"),
        (lambda r: r["claims"][0].update(datasets=["cifar100"]), "datasets must be some of"),
        (lambda r: r["budgets"].pop("full"), "the budget 'full'"),
        (lambda r: r["claims"][0].pop("study"), "names no study"),
        (lambda r: r["budgets"]["reduced"]["search"].pop("trials"), "search needs trials"),
        (lambda r: r["claims"].append(dict(r["claims"][0])), "claim ids repeat"),
    ],
)
def test_a_bad_claims_file_is_refused_with_what_is_wrong(tmp_path, change, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        findings_spec.load(_write(tmp_path, change))


def test_an_unknown_claim_or_budget_is_named():
    spec = findings_spec.load(CLAIMS)
    with pytest.raises(SpecError, match="unknown claim"):
        spec.jobs("full", ["nosuch"])
    with pytest.raises(SpecError, match="no budget 'huge'"):
        spec.jobs("huge")


# ---- verdicts against the article ----------------------------------------------------------


def pair(a, b, diff, low, high, resolved, n=10):
    return {"a": a, "b": b, "diff": diff, "low": low, "high": high, "resolved": resolved, "n": n}


@pytest.mark.parametrize(
    "p, expect, word",
    [
        (pair("x", "y", 0.02, 0.01, 0.03, True), "higher", "supported"),
        (pair("x", "y", -0.02, -0.03, -0.01, True), "higher", "contradicted"),
        (pair("x", "y", 0.004, -0.01, 0.02, False), "higher", "not resolved"),
        (pair("x", "y", 0.0, -0.005, 0.006, False), "equal", "supported"),
        (pair("x", "y", 0.0, -0.02, 0.02, False), "equal", "not resolved"),
        (pair("x", "y", 0.03, 0.02, 0.04, True), "equal", "contradicted"),
        (pair("x", "y", 0.0, -0.008, 0.03, False), "not_lower", "supported"),
        (pair("x", "y", -0.03, -0.04, -0.02, True), "not_lower", "contradicted"),
        (pair("x", "y", 0.02, 0.01, 0.03, True, n=1), "higher", "no comparison"),
    ],
)
def test_a_comparison_is_judged_against_what_the_article_expects(p, expect, word):
    assert judge([p], Check("x", "y", expect), margin=0.01).word == word


def test_a_comparison_the_study_made_the_other_way_round_is_flipped():
    j = judge([pair("y", "x", -0.02, -0.03, -0.01, True)], Check("x", "y", "higher"), 0.01)
    assert (j.word, round(j.diff, 3), round(j.low, 3), round(j.high, 3)) == (
        "supported", 0.02, 0.01, 0.03)  # fmt: skip
    with pytest.raises(KeyError, match="no comparison x − z"):
        judge([pair("x", "y", 0, 0, 0, False)], Check("x", "z", "higher"), 0.01)


def test_compute_counts_summed_and_elapsed_time_and_how_many_ran_at_once():
    from tunelab.findings.document import compute

    text = compute([(0, 3600), (1800, 5400), (7200, 9000)])  # two overlap, one after a gap
    assert text.startswith("2.50 hours summed over the 3 studies and sweeps")
    assert "2.00 hours elapsed with up to 2 running at a time" in text


def test_writing_from_a_store_without_the_runs_says_how_to_make_them(workdir):
    done = tunelab("findings", "write", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                   "--out", str(workdir / "FINDINGS.md"), cwd=workdir, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no finished study 'lr_momentum-mnist1d'" in done.stderr
    assert "tunelab findings run" in done.stderr
    assert not (workdir / "FINDINGS.md").exists()


# ---- the whole document at the reduced budget ----------------------------------------------


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """`tunelab findings run --budget reduced`: every claim's studies and sweeps, then the document."""
    work = tmp_path_factory.mktemp("findings")
    uri = f"sqlite:///{work}/mlflow.db"
    out = work / "doc" / "FINDINGS.md"
    args = ["--budget", "reduced", "--tracking-uri", uri, "--out", str(out), "--work", "runs",
            "--jobs", "2"]  # fmt: skip
    done = tunelab("findings", "run", *args, cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work, uri, out, args, done.stdout


def tables(text: str) -> list[list[list[str]]]:
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            found.append(current)
            current = []
    return found + ([current] if current else [])


@pytest.mark.slow
def test_the_reduced_budget_writes_every_claim_with_tables_that_parse(reduced):
    _, _, out, _, stdout = reduced
    text = out.read_text()
    spec = findings_spec.load(CLAIMS)
    for n, claim in enumerate(spec.claims, 1):
        assert f"## {n}. {claim.title}" in text
        assert claim.quote in text
    found = tables(text)
    assert found
    for t in found:
        assert set(t[1]) == {"---"}, t[:2]  # a header, its rule, then rows of the same width
        assert all(len(row) == len(t[0]) for row in t), t[0]
    glance = found[0]
    expected = sum(max(1, len(c.checks)) * len(c.datasets) for c in spec.claims)
    assert len(glance) - 2 == expected
    words = {"supported", "contradicted", "not resolved", "no comparison", "one study each"}
    for row in glance[2:]:
        assert row[-1] in words or row[2] == "best seed − median seed", row
    jobs = len(spec.jobs("reduced"))
    assert f"[{jobs}/{jobs}]" in stdout and "wrote" in stdout


@pytest.mark.slow
def test_every_figure_is_an_image_and_every_cited_run_is_in_the_store(reduced):
    import matplotlib.image as mpimg
    from mlflow import MlflowClient

    _, uri, out, _, _ = reduced
    text = out.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    spec = findings_spec.load(CLAIMS)
    studies = sum(len(c.datasets) for c in spec.claims)
    assert len(images) == studies  # one isolation / seed-spread / best-so-far figure per dataset
    for rel in images:
        assert mpimg.imread(out.parent / rel).shape[0] > 100
    ids = set(RUN_ID.findall(text))
    assert len(ids) > 100
    client = MlflowClient(uri)
    for run_id in ids:
        assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_the_document_cannot_drift_from_the_store(reduced):
    work, _, out, args, _ = reduced
    before = out.read_text()
    again = tunelab("findings", "run", *args, cwd=work, timeout=300)  # everything is there
    assert again.returncode == 0, again.stderr
    jobs = len(findings_spec.load(CLAIMS).jobs("reduced"))
    assert again.stdout.count("already in the store, kept") == jobs
    assert out.read_text() == before


def test_a_claim_reads_in_the_words_of_the_report():
    from tunelab.findings.verdict import line

    j = judge(
        [pair("x", "y", 0.0123, -0.001, 0.025, False, n=5)], Check("x", "y", "not_lower"), 0.01
    )
    assert line(j, 0.01) == (
        "`x` − `y`: +1.23 points [−0.10, +2.50], 5 seeds: **supported** "
        "(the article: no lower than (margin ±1.0))"
    )


# ---- the record: the document and `trace` without the store -------------------------------


@pytest.mark.slow
def test_the_document_regenerates_identically_from_its_record_alone(reduced, tmp_path):
    """A fresh directory with no store and no training: `write` reads the record `run` exported
    beside the document and gives the same text and the same figures, byte for byte; exporting
    the same store again gives the same record, byte for byte."""
    work, uri, out, _, _ = reduced
    shipped = out.parent / "findings" / "record.parquet"
    assert shipped.is_file() and shipped.stat().st_size < 5_000_000
    (tmp_path / "findings").mkdir()
    (tmp_path / "findings" / "record.parquet").write_bytes(shipped.read_bytes())
    fresh = tmp_path / "FINDINGS.md"
    done = tunelab(
        "findings",
        "write",
        "--budget",
        "reduced",
        "--out",
        str(fresh),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/none.db",
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "read the record" in done.stdout
    assert not (tmp_path / "none.db").exists()  # the absent store was not created
    assert fresh.read_text() == out.read_text()
    figures = sorted(p.name for p in (out.parent / "findings").glob("*.png"))
    assert figures and figures == sorted(p.name for p in (tmp_path / "findings").glob("*.png"))
    for name in figures:
        assert (tmp_path / "findings" / name).read_bytes() == (
            out.parent / "findings" / name
        ).read_bytes(), name
    again = tmp_path / "again.parquet"
    done = tunelab(
        "findings",
        "export",
        "--budget",
        "reduced",
        "--tracking-uri",
        uri,
        "--record",
        str(again),
        cwd=work,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == shipped.read_bytes()


@pytest.mark.slow
def test_trace_answers_for_a_cited_run_from_the_record_without_the_store(reduced, tmp_path):
    _, _, out, _, _ = reduced
    record = out.parent / "findings" / "record.parquet"
    text = out.read_text()
    study = re.search(r"Study run `([0-9a-f]{32})`", text).group(1)
    seed = re.search(r"seed 1 `([0-9a-f]{32})`", text).group(1)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/none.db"}
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "trace", seed, "--record", str(record)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "from the record" in done.stdout and seed in done.stdout
    assert "parent: " in done.stdout and "confirm" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "trace", study, "--record", str(record)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "children:" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "tunelab", "trace", "0" * 32, "--record", str(record)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "no MLflow store" in missing.stderr


@pytest.mark.slow
def test_a_conclusion_whose_verdicts_the_runs_no_longer_give_is_flagged_not_printed(
    reduced, tmp_path
):
    """The reduced runs written as if they were the full budget: the conclusion whose declared
    verdicts match is printed; the one whose verdicts differ is replaced by a flag naming the
    change, and `write` exits 1."""
    from tunelab.findings.study_section import DATA

    _, _, out, _, _ = reduced
    record = out.parent / "findings" / "record.parquet"
    glance = {}
    for row in tables(out.read_text())[0][2:]:
        glance.setdefault((row[0], row[1]), []).append(row[-1])
    other = {"supported": "contradicted"}

    def as_full(raw):
        raw["experiment"] = "findings-reduced"  # the record's experiment at the budget "full"
        raw["budgets"]["full"] = raw["budgets"]["reduced"]
        for c in raw["claims"]:
            if c.get("rests_on"):
                c["rests_on"] = {d: glance[(c["title"], DATA[d])] for d in c["rests_on"]}
        lr = raw["claims"][0]["rests_on"]["mnist1d"]
        lr[0] = other.get(lr[0], "supported")  # one verdict the runs do not give

    claims = _write(tmp_path, as_full)
    doc = tmp_path / "FINDINGS.md"
    done = tunelab(
        "findings",
        "write",
        "--from-record",
        "--record",
        str(record),
        "--claims",
        str(claims),
        "--out",
        str(doc),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "lr_momentum, mnist1d `lr_large_mom_large` − `lr_small_mom_small`" in done.stderr
    text = doc.read_text()
    assert "The conclusion written in claims.yaml is not printed" in text
    assert text.count("**What it shows.**") == 8  # every claim with a conclusion: 7 printed, 1 flag
    spec = findings_spec.load(claims)
    l2 = next(c for c in spec.claims if c.id == "l2")
    assert " ".join(l2.conclusion.split()) in text
