"""The MLflow UI opens on the study: feclip's experiment settings (the "Model training" pages, the saved
study view)."""

import json

import pytest
from mlflow import MlflowClient

from feclip import tracking
from feclip.tracking.tracker import (
    EXPERIMENT_KIND_TAG,
    UI_TAG,
    UI_VERSION,
    VIEW_METRICS,
    VIEW_TAG_PREFIX,
)
from feclip.tracking.uris import STUDY_VIEW

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
