"""The MLflow UI as a user's browser shows it: headless Chromium (Debian's `chromium`, driven
by playwright) with a fresh profile, against a real MLflow server on a store a run filled.
Screenshots are kept in test-artifacts/ (git-ignored) for a reader to look at."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from helpers import FAST, serve_mlflow

pytestmark = pytest.mark.slow

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
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot))
    return page


def test_the_printed_link_opens_the_run_in_the_model_training_view(train, workdir, browser):
    done = train(*FAST, "dataset.train_size=256", "mlflow.log_model=false")
    [line] = [line for line in done.log.splitlines() if "in the MLflow UI: " in line]
    link = re.search(r"http://127\.0\.0\.1:5000(/#/experiments/\S+)", line)
    assert link is not None and "workflowType=machine_learning" in line, line
    with serve_mlflow(f"sqlite:///{workdir / 'mlflow.db'}", workdir / "mlruns", workdir) as url:
        page = _opened(browser, url + link.group(1), "run_page.png")
        # the run's page in the model-training view, never GenAI's overview of traces
        assert "workflowType=machine_learning" in page.url and "/runs/" in page.url, page.url
        assert "overview" not in page.url and page.get_by_text("Model metrics").count() > 0
        runs = _opened(
            browser, url + link.group(1).split("/runs/")[0] + "/runs?workflowType=machine_learning", "runs.png"
        )
        assert runs.get_by_text("1 matching run", exact=True).count() == 1
