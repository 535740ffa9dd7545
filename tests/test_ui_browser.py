"""The MLflow UI as a user's browser shows it: headless Chromium (Debian's `chromium`, driven
by playwright) with a fresh profile, against a real MLflow server on a store a run filled.
Screenshots are kept in test-artifacts/ (git-ignored) for a reader to look at."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pytest

from helpers import FAST, cli_process, main_in_process, register_test_models, registry_restored, serve_mlflow

# one worker builds the module's store, once, for all three tests
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    """A headless Chromium with a fresh profile; skipped, saying why, where none can be had."""
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched.new_context(viewport={"width": 1400, "height": 900})
        finally:
            launched.close()


def _opened(context, url: str, shot: str):
    page = context.new_page()
    page.goto(url, wait_until="load", timeout=120_000)
    page.wait_for_load_state("domcontentloaded")
    page.get_by_text("Model training").first.wait_for(timeout=60_000)
    page.wait_for_timeout(3000)  # the runs table and charts fill in after the frame
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():  # MLflow's assistant panel opens beside a fresh profile's first page
        assistant.first.click()
        page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot))
    return page


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    """The records a user makes: a finished run (with its model and host metrics), and a
    run stopped by Ctrl-C and then resumed. Yields (the finished run's printed link, the
    stopped run's printed link, the store's URL as a served UI)."""
    workdir = tmp_path_factory.mktemp("ui")
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    # the Ctrl-C is a real process's; the runs around it are the same command run in here
    proc = cli_process("testing_cli", *FAST, "model=slow_cnn", "epochs=30", cwd=workdir)
    with pytest.MonkeyPatch.context() as here, registry_restored():
        here.chdir(workdir)
        register_test_models()
        done = main_in_process(*FAST, "epochs=2", "mlflow.system_metrics_every_s=0.5")
        assert done.returncode == 0, done.output
        for line in proc.stdout:
            if line.startswith("epoch 1/30"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGINT, err
        stopped_dir = re.search(r"resume=(\S+)", err).group(1)
        resumed = main_in_process(f"resume={stopped_dir}", "epochs=2")
        assert resumed.returncode == 0, resumed.output
    links = [_link(r) for r in (done.output, resumed.output)]
    with serve_mlflow(f"sqlite:///{workdir / 'mlflow.db'}", workdir / "mlruns", workdir) as url:
        yield (*links, url)


def _link(output: str) -> str:
    """The UI link a run's last line prints, as the README tells users to open it."""
    [line] = [line for line in output.splitlines() if "in the MLflow UI: " in line]
    link = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\S+)", line)
    assert link is not None and "workflowType=machine_learning" in line, line
    return link.group(1)


def test_the_printed_link_opens_the_run_in_the_model_training_view(store, browser):
    finished, _, url = store
    page = _opened(browser, url + finished, "run_page.png")
    # the run's page in the model-training view, never GenAI's overview of traces
    assert "workflowType=machine_learning" in page.url and "/runs/" in page.url, page.url
    assert "overview" not in page.url and page.get_by_text("Model metrics").count() > 0
    runs = _opened(browser, url + finished.split("/runs/")[0] + "/runs?workflowType=machine_learning", "runs.png")
    assert runs.get_by_text("2 matching runs", exact=True).count() == 1


def test_the_run_page_lists_test_accuracy_before_any_host_metric(store, browser):
    finished, _, url = store
    page = _opened(browser, url + finished, "run_metrics.png")
    heading = page.get_by_text("Metrics (").first
    heading.wait_for(timeout=60_000)
    heading.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "run_metrics.png"))
    metrics = page.locator("table, [role=table]").first.inner_text()  # the Overview's Metrics table
    assert "test/acc" in metrics and "system/" not in metrics, metrics
    if "host/" in metrics:  # rows past the table's height may not be drawn
        assert metrics.index("test/acc") < metrics.index("host/"), metrics


def test_a_stopped_and_resumed_run_tells_its_story(store, browser):
    _, resumed, url = store
    page = _opened(browser, url + resumed, "resumed_run.png")
    page.get_by_text("Show more").first.click()
    page.wait_for_timeout(500)
    text = page.inner_text("body")
    assert (
        "stopped by signal 2 (SIGINT) in epoch 2 of 30" in text
        or "stopped by signal 2 (SIGINT) after epoch 1 of 30" in text
    )
    assert re.search(r"resumed (after|in) epoch \d+ of 2.*: python -m cifar_exp resume=", text), text[:3000]
    assert text.index("stopped by signal 2") < text.index("resumed ")
    assert "epochs=2 synthetic slow_cnn" in text  # named for the checkpoint's model, not the resume's default
    page.screenshot(path=str(ARTIFACTS / "resumed_run.png"))
