"""docs/findings/claims.yaml read and checked: the claims, their studies and the budgets, and the
command lines that run each piece of a claim at a budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPECTS = ("higher", "not_lower", "equal")
KINDS = ("study", "audit", "search")
DATASETS = ("mnist1d", "digits")
SEARCH_BUDGET = ("trials", "epochs", "grid_points", "study_seeds")
ABOUT = ("final_quality", "short_budget")  # what a claim's article is about: see claims.yaml
VERDICTS = ("supported", "contradicted", "not resolved", "no comparison", "one study each")


class SpecError(ValueError):
    """claims.yaml says something that cannot run; the message names the claim and the key."""


@dataclass(frozen=True)
class Check:
    a: str
    b: str
    expect: str


@dataclass(frozen=True)
class Method:
    name: str
    overrides: list[str]
    seeded: bool
    space: list[str] | None


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    article: str
    quote: str
    says: str
    kind: str
    datasets: list[str]
    about: str = "final_quality"
    note: str | None = None  # how the study tests the claim, where the budget needs saying
    study: str | None = None
    checks: list[Check] = field(default_factory=list)
    conclusion: str | None = None
    rests_on: dict[str, list[str]] = field(default_factory=dict)  # dataset: a verdict per check
    problem: list[str] = field(default_factory=list)
    space: list[str] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    name: str
    about: str
    machine: str
    study: list[str]
    audit: list[str]
    search: dict[str, Any]
    final_quality: list[str] = field(default_factory=list)  # added to final-quality studies
    claims: dict[str, list[str]] = field(default_factory=dict)  # added to one claim's studies


@dataclass(frozen=True)
class Job:
    """One command of a claim at a budget: a study on one dataset, or one search sweep."""

    claim: str
    name: str  # the study's (or sweep's) name in the store, unique within the experiment
    kind: str  # "study" or "sweep": the role of its MLflow parent run
    overrides: list[str]


@dataclass(frozen=True)
class Spec:
    experiment: str
    margin: float
    budgets: dict[str, Budget]
    claims: list[Claim]

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise SpecError(
                f"no budget {name!r} in claims.yaml (budgets: {', '.join(self.budgets)})"
            )
        return self.budgets[name]

    def experiment_for(self, budget: str) -> str:
        return self.experiment if budget == "full" else f"{self.experiment}-{budget}"

    def jobs(self, budget: str, only: list[str] | None = None) -> list[Job]:
        b = self.budget(budget)
        unknown = sorted(set(only or []) - {c.id for c in self.claims})
        if unknown:
            raise SpecError(f"unknown claim(s) {unknown}; claims: {[c.id for c in self.claims]}")
        out: list[Job] = []
        for c in self.claims:
            if only and c.id not in only:
                continue
            out += search_jobs(c, b) if c.kind == "search" else study_jobs(c, b)
        return out


def study_jobs(c: Claim, b: Budget) -> list[Job]:
    extra = b.audit if c.kind == "audit" else b.study
    extra = [
        *extra,
        *(b.final_quality if c.about == "final_quality" else []),
        *b.claims.get(c.id, []),
    ]
    return [
        Job(
            c.id,
            f"{c.id}-{d}",
            "study",
            [f"study={c.study}", f"data={d}", *extra, f"hydra.sweeper.study_name={c.id}-{d}"],
        )
        for d in c.datasets
    ]


def search_jobs(c: Claim, b: Budget) -> list[Job]:
    s = b.search
    out = []
    for d in c.datasets:
        for m in c.methods:
            seeds = s["study_seeds"] if m.seeded else s["study_seeds"][:1]
            for seed in seeds:
                name = f"{c.id}-{d}-{m.name}-s{seed}"
                out.append(
                    Job(
                        c.id,
                        name,
                        "sweep",
                        [
                            f"data={d}",
                            *c.problem,
                            *(m.space if m.space is not None else c.space),
                            *m.overrides,
                            f"hydra.sweeper.n_trials={s['trials']}",
                            f"hydra.sweeper.sampler.seed={seed}",
                            f"hydra.sweeper.grid_points={s['grid_points']}",
                            f"trainer.max_epochs={s['epochs']}",
                            f"hydra.sweeper.study_name={name}",
                        ],
                    )
                )
    return out


def load(path: Path) -> Spec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with experiment, budgets and claims")
    try:
        budgets = {n: _budget(n, b) for n, b in raw["budgets"].items()}
        claims = [_claim(c) for c in raw["claims"]]
        spec = Spec(str(raw["experiment"]), float(raw.get("margin", 0.01)), budgets, claims)
    except KeyError as exc:
        raise SpecError(f"{path}: missing key {exc}") from None
    if "full" not in budgets:
        raise SpecError(
            f"{path}: the budget 'full' (the one the document is written at) is missing"
        )
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise SpecError(f"{path}: claim ids repeat: {ids}")
    return spec


def _budget(name: str, b: dict[str, Any]) -> Budget:
    search = dict(b.get("search") or {})
    missing = [k for k in SEARCH_BUDGET if k not in search]
    if missing:
        raise SpecError(f"budget {name}: search needs {', '.join(missing)}")
    machine = str(b.get("machine", "the machine that ran them"))
    return Budget(
        name,
        str(b.get("about", "")),
        machine,
        list(b.get("study", [])),
        list(b.get("audit", [])),
        search,
        [str(o) for o in b.get("final_quality") or []],
        {str(k): [str(o) for o in v] for k, v in (b.get("claims") or {}).items()},
    )


def _claim(c: dict[str, Any]) -> Claim:
    cid = c.get("id", "?")
    kind = c.get("kind", "study")
    if kind not in KINDS:
        raise SpecError(f"claim {cid}: kind {kind!r} is not one of {KINDS}")
    datasets = list(c.get("datasets") or [])
    bad = [d for d in datasets if d not in DATASETS]
    if not datasets or bad:
        raise SpecError(f"claim {cid}: datasets must be some of {DATASETS} (got {datasets})")
    about = c.get("about")
    if about not in ABOUT:
        raise SpecError(f"claim {cid}: about must be one of {ABOUT} (got {about!r})")
    checks = [Check(str(k["a"]), str(k["b"]), str(k["expect"])) for k in c.get("checks", [])]
    for k in checks:
        if k.expect not in EXPECTS:
            raise SpecError(f"claim {cid}: expect {k.expect!r} is not one of {EXPECTS}")
    rests_on = {str(d): [str(w) for w in ws] for d, ws in (c.get("rests_on") or {}).items()}
    if c.get("conclusion") and checks and sorted(rests_on) != sorted(datasets):
        raise SpecError(
            f"claim {cid}: its conclusion names no verdicts it rests on for every dataset "
            f"(rests_on: {{dataset: [a verdict per check]}} for {datasets})"
        )
    for d, words in rests_on.items():
        if len(words) != len(checks) or not set(words) <= set(VERDICTS):
            raise SpecError(
                f"claim {cid}: rests_on.{d} must be {len(checks)} verdicts, one per check, "
                f"each one of {VERDICTS} (got {words})"
            )
    methods = [
        Method(n, list(m.get("overrides", [])), bool(m.get("seeded", True)), m.get("space"))
        for n, m in (c.get("methods") or {}).items()
    ]
    if kind == "search" and not methods:
        raise SpecError(f"claim {cid}: a search claim names its methods")
    if kind != "search" and not c.get("study"):
        raise SpecError(f"claim {cid}: names no study (conf/study/<name>.yaml)")
    return Claim(
        id=cid,
        title=c["title"],
        article=str(c["article"]),
        quote=c["quote"],
        says=" ".join(str(c["says"]).split()),
        kind=kind,
        datasets=datasets,
        about=about,
        note=" ".join(str(c["note"]).split()) if c.get("note") else None,
        study=c.get("study"),
        checks=checks,
        conclusion=c.get("conclusion"),
        rests_on=rests_on,
        problem=list(c.get("problem", [])),
        space=list(c.get("space", [])),
        methods=methods,
    )
