"""The MLflow UI opens on the study: feclip's experiment settings (the "Model training" pages, the saved
study view) and, in headless Chromium (Debian's `chromium`; skipped with the reason where it cannot start),
what a person sees at the address a finished smoke sweep prints: every job by name, the variant column, a
metric column with the jobs' values, not MLflow's GenAI pages."""

import importlib.util
import json
import re
from html.parser import HTMLParser

import pytest
from helpers import ROOT, run_cli, small_data
from mlflow import MlflowClient
from mlflow_server import mlflow_server  # noqa: F401 (fixture)

from feclip import tracking
from feclip.tracking.tracker import (
    EXPERIMENT_KIND_TAG,
    UI_TAG,
    UI_VERSION,
    VIEW_METRICS,
    VIEW_TAG_PREFIX,
)
from feclip.tracking.uris import STUDY_VIEW

SPEC = importlib.util.spec_from_file_location("ui_screenshot", ROOT / "scripts" / "ui_screenshot.py")
ui_screenshot = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ui_screenshot)
VIEW_TAG = VIEW_TAG_PREFIX + STUDY_VIEW


def view_state(experiment) -> dict:
    """The study view's runs-page settings, as MLflow's UI reads them from the experiment tag."""
    envelope = json.loads(experiment.tags[VIEW_TAG])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    return json.loads(envelope["state"])


# ------------------------------------------------------------------------------ experiment settings


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    """One sqlite store for the module's experiments (creating one costs seconds)."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


def test_created_experiment_carries_the_study_view(client):
    experiment = client.get_experiment(tracking.experiment_id(client, "study"))
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert experiment.tags[UI_TAG] == UI_VERSION
    state = view_state(experiment)
    columns = state["selectedColumns"]
    assert {"tags.`variant`", "tags.`domain`", "metrics.`auroc`", "metrics.`dev/auroc`"} <= set(columns)
    assert state["columnOrder"] == columns  # tags before metrics
    assert [key["groupByData"] for key in state["groupBy"]["groupByKeys"]] == ["variant", "method"]
    assert state["searchFilter"] == "" and state["runsHiddenMode"] == "SHOW_ALL"
    # the chart view: one bar chart per study metric, one bar per job (not per group), every job shown
    charts = state["compareRunCharts"]
    assert [(c["type"], c["metricKey"]) for c in charts] == [("BAR", m) for m in VIEW_METRICS]
    assert state["useGroupedValuesInCharts"] is False and all(c["runsCountToCompare"] >= 1000 for c in charts)
    sections = {s["uuid"]: s for s in state["compareRunSections"]}
    assert {c["metricSectionId"] for c in charts} == {"feclip-study"} and sections["feclip-study"]["display"]
    assert not any(s["display"] for s in sections.values() if s["name"] == "Model metrics")


def test_existing_experiment_gets_the_settings_on_first_use_and_keeps_a_saved_view(client):
    exp_id = client.create_experiment("theirs")  # made elsewhere: no feclip settings
    assert tracking.experiment_id(client, "theirs", create=False) == exp_id  # reading changes nothing
    assert UI_TAG not in client.get_experiment(exp_id).tags
    tracking.experiment_id(client, "theirs")
    tags = client.get_experiment(exp_id).tags
    assert tags[UI_TAG] == UI_VERSION and tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(exp_id, VIEW_TAG, '{"name": "mine"}')  # a person saved over the view
    tracking.experiment_id(client, "theirs")
    assert client.get_experiment(exp_id).tags[VIEW_TAG] == '{"name": "mine"}'
    client.set_experiment_tag(exp_id, UI_TAG, "0")  # settings of an older feclip are replaced
    tracking.experiment_id(client, "theirs")
    assert view_state(client.get_experiment(exp_id))["groupBy"]


def test_ui_addresses_open_the_training_pages_and_the_study_view():
    assert tracking.run_url("http://host:5000/", "7") == (
        "http://host:5000/#/experiments/7/runs?viewStateShareKey=feclip-study&workflowType=machine_learning"
    )
    assert tracking.run_url("sqlite:///x.db", "7", "abc") == (
        "http://127.0.0.1:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )


# ----------------------------------------------------------------------------------- in a browser


class Cells(HTMLParser):
    """The text of every grid cell and header of the runs table, by column id (`col-id`)."""

    def __init__(self):
        super().__init__()
        self.columns: dict[str, list[str]] = {}
        self._open: list[str | None] = []  # the col-id (or None) of each open element

    def handle_starttag(self, tag, attrs):
        column = dict(attrs).get("col-id")
        if column is not None:
            self.columns.setdefault(column, []).append("")
        self._open.append(column)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        column = next((c for c in reversed(self._open) if c is not None), None)
        if column is not None and data.strip():
            self.columns[column][-1] += data.strip()


VOID = {"input", "img", "br", "hr", "meta", "link", "source", "col", "wbr", "area", "base", "embed"}


def table_cells(dom: str) -> dict[str, list[str]]:
    body = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S | re.I)
    void = "|".join(VOID)
    body = re.sub(rf"<({void})\b([^>]*?)/?>", r"<\1\2></\1>", body)  # void elements closed
    parser = Cells()
    parser.feed(body)
    return parser.columns


def js_number(value: float) -> str:
    """How the UI prints a metric value (JavaScript's shortest round trip, like Python's repr)."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


@pytest.fixture(scope="module")
def browser() -> str:
    path = ui_screenshot.find_browser()
    if path is None:
        pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    problem = ui_screenshot.browser_problem(path)
    if problem:
        pytest.skip(f"headless Chromium cannot start here: {problem}")
    return path


def test_a_finished_smoke_sweep_opens_on_its_study(browser, mlflow_server, tmp_path):  # noqa: F811
    sweep = ["experiment=smoke", "domain=A", "freq=dct,fft", f"tracking.uri={mlflow_server.uri}"]
    sweep += ["tracking.experiment=ui"]
    run_cli(["-m", *sweep, f"hydra.sweep.dir={tmp_path / 'multirun'}", *small_data(tmp_path, n=24)], tmp_path)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("ui")
    runs = client.search_runs([experiment.experiment_id])
    jobs = [r for r in runs if tracking.PARENT_TAG in r.data.tags]
    assert len(jobs) == 2 and len(runs) == 3

    url = tracking.run_url(mlflow_server.uri, experiment.experiment_id)  # what the sweep prints
    dom = ui_screenshot.dump_dom(browser, url, size="1600,1000")
    text = ui_screenshot.page_text(dom)
    assert "Send your first trace" not in text and "feclip study" in text, text[:2000]
    cells = table_cells(dom)
    variants = cells.get("tags.`variant`", [])
    aurocs = cells.get("metrics.`auroc`", [])
    assert "variant" in variants and "auroc" in aurocs, sorted(cells)  # the column headers
    for job in jobs:  # every job by name (its link), its variant and its auroc in the table
        page = f"#/experiments/{experiment.experiment_id}/runs/{job.info.run_id}"
        link = rf'href="{page}[?"][^>]*>\s*<span[^>]*>{re.escape(job.info.run_name)}</span>'
        assert re.search(link, dom), job.info.run_name
        assert job.data.tags["variant"] in variants, variants
        assert js_number(job.data.metrics["auroc"]) in aurocs, aurocs
