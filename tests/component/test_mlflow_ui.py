"""The MLflow UI (`mlflow ui` of MLflow 3.17) on a real store of runs logged by chestxray.tracking,
driven in Debian's Chromium: the URL the project gives (``tracking.ui_url``) opens the experiment on
its runs table of training runs, with the headline metrics as columns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_compare import log_run

from chestxray import tracking
from chestxray.__main__ import free_ports
from conftest import CHROMIUM, CHROMIUM_ARGS, wait_until_up

DATA_VERSION = "4bdd84e5c77a"


@pytest.fixture
def mlflow_ui(mlflow_store: str, tmp_path: Path) -> Iterator[str]:
    """``chestxray ui`` on the test's store (``MLFLOW_TRACKING_URI``, a free port on 127.0.0.1): its base URL."""
    port = free_ports(1)[0]
    log = tmp_path / "mlflow-ui.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "chestxray", "ui", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", server, "`chestxray ui`", log.read_text)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: `mlflow ui` and its uvicorn worker
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def cell(page, run_id: str, column: str) -> str:
    """The text of the runs table's cell of run ``run_id`` (ag-grid's row id) in column ``column``
    (its col-id, e.g. ``metrics.`test.macro_f1```)."""
    return page.inner_text(f'.ag-row[row-id="{run_id}"] [col-id="{column}"]')


@pytest.mark.browser
@pytest.mark.usefixtures("chromium")
def test_the_project_url_opens_the_training_runs_with_the_headline_metrics(mlflow_ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    scores = {"cnn": (0.81, 0.79), "vgg16": (0.86, 0.84)}
    runs = {model: log_run(model, DATA_VERSION, val, test) for model, (val, test) in scores.items()}
    with tracking.run({"stage": "eda"}, name="eda"):  # not a training run: the view leaves it out
        pass
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 800})  # a fresh browser: no saved view
            logged = (tmp_path / "mlflow-ui.log").read_text()
            assert tracking.ui_url(mlflow_ui) in logged  # the URL `chestxray ui` prints is the one tested here
            page.goto(tracking.ui_url(mlflow_ui))
            page.wait_for_selector(
                f'.ag-row[row-id="{runs["vgg16"]}"] [col-id="metrics.`test.macro_f1`"]', timeout=120_000
            )
            page.screenshot(path=tmp_path / "mlflow.png")  # what a user sees first
            assert "/runs?" in page.url and "workflowType=machine_learning" in page.url  # not the GenAI overview
            headers = page.eval_on_selector_all(
                '.ag-header-cell[col-id^="metrics."]',
                "cells => cells.map(c => [c.getBoundingClientRect().x, c.innerText.trim()])",
            )
            assert [name for _, name in sorted(headers)] == list(tracking.HEADLINE_METRICS)  # left to right
            shown = page.eval_on_selector_all(
                ".ag-center-cols-container .ag-row", "rows => rows.map(r => r.getAttribute('row-id'))"
            )
            assert sorted(shown) == sorted(runs.values())
            for model, run_id in runs.items():
                name = tracking.get_run(run_id)["run_name"]  # e.g. cnn-4bdd84e5c77a-0f3a9c1e
                assert name.startswith(f"{model}-{DATA_VERSION}-") and name in cell(
                    page, run_id, "attributes.`Run Name`"
                )
                val, test = scores[model]
                assert cell(page, run_id, "metrics.`test.macro_f1`") == str(test)
                assert cell(page, run_id, "metrics.`val.macro_f1`") == str(val)
        finally:
            browser.close()
