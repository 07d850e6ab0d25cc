"""What a user sees in the MLflow UI, checked in a real (headless) Chromium: the experiment opens in
the runs table, a multirun's children are named by what they change, the compare view shows the
differing parameter and the val/acc curves, and a sweep parent lists its reports.

Chromium comes from the system (`apt-get install -y chromium`); Playwright drives it. Without it
these tests skip on a workstation and fail in CI. Screenshots of every page land in
$TUNELAB_TEST_ARTIFACTS (default: test-artifacts/ in the repository)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, TRAIN, free_port, wait_for_health

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ui_store")]  # one worker builds it

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = Path(os.environ.get("TUNELAB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"


def _chromium() -> str:
    """The browser to drive, or a skip (a failure in CI, where it must be installed)."""
    exe = (
        os.environ.get("TUNELAB_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    try:
        import playwright  # noqa: F401
    except ImportError:
        exe, why = None, "the playwright package is not installed (pip install -e '.[dev]')"
    else:
        why = "Chromium is not installed (apt-get install -y chromium)"
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run: {why}")
    pytest.skip(why)


MULTIRUN = "optimizer=sgd,adam"
ASSISTANT_PANEL = "[data-component-id='mlflow.assistant.chat_panel.close']"


def _train(cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(TRAIN), "-m", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _links(printed: str) -> dict[str, str]:
    """The UI links a command printed, by what they open (`mlflow ui`'s default port 5000)."""
    links = re.findall(r"http://127\.0\.0\.1:5000/(#/\S+)", printed)
    kinds = {"runs": "/runs?", "compare": "/compare-runs?", "curves": "/metric?"}
    return {k: next(x for x in links if mark in x) for k, mark in kinds.items()}


@contextlib.contextmanager
def _server(store: Path, *app: str):
    """`mlflow server` on the store: tunelab's app (`app`: "--app-name", "tunelab") or plain."""
    port = free_port()
    log = store / f"server-{port}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *app, "--workers", "1",
             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=store, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(server, url, log, timeout=120)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """An MLflow server (tunelab's app) on a store made by a multirun and a small sweep (an MLP on
    the synthetic data), no models logged, and the links the multirun printed."""
    exe = _chromium()
    store = tmp_path_factory.mktemp("ui_store")
    # no UI test opens a model; the multirun, whose val/acc curves the link tests read, trains
    # the default model as before
    small = ["trainer.max_epochs=2", "data=synthetic", "tracking.log_model=false"]
    printed = _train(store, MULTIRUN, *small)
    _train(
        store,
        "search=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=lr-sweep",
        "model=mlp",
        "model.width=16",
        *small,
    )
    with _server(store, "--app-name", "tunelab") as url:
        yield SimpleNamespace(url=url, exe=exe, store=store, links=_links(printed))


def _browser(p, exe: str, profile: Path):
    browser = p.chromium.launch_persistent_context(
        str(profile), executable_path=exe, args=CHROMIUM_FLAGS, headless=True,
        viewport={"width": 1600, "height": 1000},
    )  # fmt: skip
    browser.set_default_timeout(60_000)
    return browser


@pytest.fixture
def page(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    url, exe = ui.url, ui.exe
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p, exe, tmp_path / "profile")
        pg = browser.new_page()
        pg.base = url
        try:
            yield pg
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    page.wait_for_timeout(500)  # charts draw after their data arrives
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _open_runs_table(page) -> None:
    """From the experiments list, click into the experiment, as a user would."""
    page.goto(f"{page.base}/#/experiments")
    page.get_by_role("link", name="tunelab", exact=True).click()
    page.locator(".ag-row").first.wait_for()


def _row(page, name: str):
    link = page.get_by_role("link", name=name, exact=True)
    return page.locator(".ag-row").filter(has=link)


def _expand(page, parent: str) -> None:
    cell = page.locator("[col-id='attributes.`Run Name`']").filter(has_text=parent)
    cell.get_by_role("button").click()


def _open_metric(page, name: str) -> None:
    """Click the metric's link until the app has routed to its page: the route is a hash
    change (no load event), and a click that lands while the table re-renders is lost."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    link = page.get_by_role("link", name=name, exact=True)
    for _ in range(40):  # the metrics table renders the rows in view: scroll it to the metric
        if link.count():
            break
        page.get_by_role("link", name=re.compile(r"^(best|test|train|val|opt|perf)")).last.hover()
        page.mouse.wheel(0, 500)
        page.wait_for_timeout(150)
    for attempt in (1, 2, 3):
        link.first.click()
        try:
            page.wait_for_url(re.compile(r"/metric"), wait_until="commit", timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == 3:
                raise


def _wait_for_legend(page, entries: list[str]) -> None:
    """The chart's legend, one line per run. A chart that has not drawn in 45 s (a loaded
    machine: its data request lost) gets one reload, as a user would press F5."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in (1, 2):
        try:
            for entry in entries:
                page.get_by_text(entry).first.wait_for(timeout=45_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            page.reload()


def test_the_experiment_opens_in_the_runs_table_with_children_named_by_their_overrides(page):
    _open_runs_table(page)
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
    assert page.get_by_text("Token Usage").count() == 0  # not the GenAI overview
    multirun = MULTIRUN
    assert _row(page, multirun).count() == 1 and _row(page, "lr-sweep").count() == 1
    _expand(page, multirun)
    for child in ("optimizer=sgd", "optimizer=adam"):
        _row(page, child).wait_for()
    _expand(page, "lr-sweep")
    trials = page.get_by_role("link", name=re.compile(r"^trial \d+ lr=\S+ weight_decay=\S+$"))
    trials.first.wait_for()
    assert trials.count() == 3
    _shot(page, "01-runs-table.png")


def test_the_compare_view_shows_the_differing_parameter_and_the_val_acc_curves(page):
    _open_runs_table(page)
    _expand(page, MULTIRUN)
    for child in ("optimizer=sgd", "optimizer=adam"):
        _row(page, child).locator("input.ag-checkbox-input").check()
    page.get_by_role("button", name=re.compile("^Compare")).click()
    page.get_by_text("Comparing 2 Runs").first.wait_for()
    row = page.locator("tr").filter(has=page.get_by_text("optimizer.name", exact=True))
    assert re.search(r"optimizer\.name\s+sgd\s+adam", row.first.inner_text()), row.inner_text()
    _shot(page, "02-compare-runs.png")
    _open_metric(page, "val/acc")
    _wait_for_legend(page, [f"{child} (val/acc)" for child in ("optimizer=sgd", "optimizer=adam")])
    assert page.locator("svg .trace, svg .scatterlayer path").count() >= 2
    _shot(page, "03-compare-val-acc.png")


def test_the_sweep_parent_lists_its_reports_as_artifacts(page):
    _open_runs_table(page)
    page.get_by_role("link", name="lr-sweep", exact=True).click()
    page.get_by_role("tab", name="Artifacts").or_(
        page.get_by_role("link", name="Artifacts")
    ).first.click()  # noqa: E501
    for name in ("trials.csv", "best_overrides.txt", "best_overrides.yaml", "figures"):
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("trials.csv", exact=True).first.click()
    page.get_by_text(re.compile("optimizer.lr")).first.wait_for()  # the preview of the table
    _shot(page, "04-sweep-artifacts.png")
    page.get_by_text("figures", exact=True).first.click()
    for fig in ("history.png", "importances.png", "slice.png"):
        page.get_by_text(fig, exact=True).first.wait_for()
    page.get_by_text("history.png", exact=True).first.click()
    # the figure itself, previewed (a decoded image wider than any icon)
    page.wait_for_function("() => [...document.images].some(i => i.naturalWidth > 300)")
    _shot(page, "05-sweep-figures.png")


def _sees_the_comparison(page, links: dict[str, str], base: str, shot: str) -> None:
    """The printed compare and curves links, opened as they are (no clicks): both runs by name,
    the optimizer.name row with both values, the val/acc chart with one curve per run."""
    page.goto(f"{base}/{links['compare']}")
    page.get_by_text("Comparing 2 Runs").first.wait_for()
    for child in ("optimizer=sgd", "optimizer=adam"):
        page.get_by_text(child, exact=True).first.wait_for()
    row = page.locator("tr").filter(has=page.get_by_text("optimizer.name", exact=True))
    cells = row.first.inner_text().split()
    assert cells[0] == "optimizer.name" and sorted(cells[1:]) == ["adam", "sgd"], cells
    _shot(page, f"{shot}-compare.png")
    page.goto(f"{base}/{links['curves']}")
    _wait_for_legend(page, [f"{child} (val/acc)" for child in ("optimizer=sgd", "optimizer=adam")])
    page.locator("svg .scatterlayer .trace").nth(1).wait_for()  # a curve per run, drawn
    _shot(page, f"{shot}-val-acc.png")


def test_the_printed_links_show_the_multiruns_comparison_and_its_jobs_without_a_click(ui, page):
    links = ui.links
    _sees_the_comparison(page, links, ui.url, "06-printed")
    # the runs table: the jobs as rows of their own, sorted by val/acc, its value a column
    page.goto(f"{ui.url}/{links['runs']}")
    for child in ("optimizer=sgd", "optimizer=adam"):
        _row(page, child).wait_for()
    # the jobs as top-level rows: the view's filter is applied; the parent and the sweep are out
    assert _row(page, MULTIRUN).count() == 0 and _row(page, "lr-sweep").count() == 0
    headers = page.locator(".ag-header-cell").evaluate_all(
        "els => els.map(e => e.getAttribute('col-id'))"
    )
    assert {"metrics.`val/acc`", "metrics.`test/acc`", "params.`optimizer.name`"} <= set(headers)
    _shot(page, "06-printed-runs-table.png")
    assert page.locator(ASSISTANT_PANEL).count() == 0  # tunelab's app: the Assistant stays closed


def test_the_printed_compare_link_works_in_a_plain_mlflow_server(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    with _server(ui.store) as url, sync_playwright() as p:
        browser = _browser(p, ui.exe, tmp_path / "profile")
        try:
            page = browser.new_page()
            _sees_the_comparison(page, ui.links, url, "07-plain-server")
            # the control: MLflow's own app opens its Assistant panel on a first visit
            page.locator(ASSISTANT_PANEL).first.wait_for()
        finally:
            browser.close()
