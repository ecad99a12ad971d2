"""feclip.tracking: URIs and their checks, Tracker runs, the Hydra sweep parent run, run names; on a tmp
sqlite store, a real `mlflow server` and one real Hydra multirun."""

import atexit
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from mlflow_server import free_port, mlflow_server  # noqa: F401 (fixture)
from omegaconf import OmegaConf

from feclip import tracking
from feclip.methods.registry import job_reads
from feclip.tracking import JobInfo, MlflowSweepCallback, Tracker, TrackingError
from feclip.tracking.local import update_run
from feclip.tracking.sweep import sweep_exit_code


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one costs ~1 s); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def _run(uri: str, run_id: str):
    return MlflowClient(uri).get_run(run_id)


# ---------------------------------------------------------------------------------------------- URIs


def test_resolve_tracking_uri_env_default_and_relative_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        tracking.resolve_tracking_uri("sqlite:///db/x.db?a=1", tmp_path)
        == f"sqlite:///{tmp_path}/db/x.db?a=1"
    )
    assert tracking.resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert tracking.resolve_tracking_uri("http://host:5000", tmp_path) == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri("http://host:5000", tmp_path) == f"sqlite:///{tmp_path}/env.db"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("file:///tmp/mlruns", "file store"),
        ("./mlruns", "file store"),
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("sqlite://", "in-memory"),
    ],
)
def test_check_tracking_uri_rejects_bad_schemes(uri, fragment):
    with pytest.raises(TrackingError, match=fragment):
        tracking.check_tracking_uri(uri)


def test_the_ui_address_is_where_mlflow_ui_serves(monkeypatch):
    """A sqlite store's run address uses the port `mlflow ui` serves on (its MLFLOW_PORT / MLFLOW_HOST, else
    5000), the printed command says that port; FECLIP_UI_URL names another address (a tunnel)."""
    for name in ("MLFLOW_PORT", "MLFLOW_HOST", "FECLIP_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    uri = "sqlite:////data/mlflow.db"
    workflow = "workflowType=machine_learning"
    assert tracking.run_url(uri, "3", "abc") == f"http://127.0.0.1:5000/#/experiments/3/runs/abc?{workflow}"
    assert tracking.ui_command(uri).startswith(f"mlflow ui --backend-store-uri {uri} --port 5000 ")
    monkeypatch.setenv("MLFLOW_PORT", "5001")
    monkeypatch.setenv("MLFLOW_HOST", "0.0.0.0")
    assert tracking.run_url(uri, "3").startswith("http://127.0.0.1:5001/#/experiments/3/runs?")
    assert "--port 5001 " in tracking.ui_command(uri)
    monkeypatch.setenv("FECLIP_UI_URL", "http://localhost:8080/")
    assert tracking.run_url(uri, "3", "abc") == f"http://localhost:8080/#/experiments/3/runs/abc?{workflow}"
    assert tracking.run_url("http://host:5000", "3").startswith(
        "http://host:5000/#/experiments/3/runs?"
    )  # a server's own
    assert tracking.ui_command("http://host:5000") is None


def test_check_tracking_uri_sqlite_paths(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a database\n" * 100)
    with pytest.raises(TrackingError, match="cannot be created: .*a_file is not a writable folder"):
        tracking.check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(TrackingError, match="is not a sqlite database"):
        tracking.check_tracking_uri(f"sqlite:///{blocker}")
    tracking.check_tracking_uri(f"sqlite:///{tmp_path}/new/folder/mlflow.db")  # mlflow creates the folders
    assert not (tmp_path / "new").exists()  # ... but the check does not


def test_unreachable_server_is_one_line_error_naming_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    uri = f"http://127.0.0.1:{free_port()}"  # bound once, then closed: nothing listens
    with pytest.raises(TrackingError) as caught:
        tracking.check_tracking_uri(uri)
    message = str(caught.value)
    assert uri in message and "Connection refused" in message and "MLFLOW_TRACKING_URI" in message
    assert "\n" not in message
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # the fast settings were temporary


def test_check_makes_a_single_request_attempt():
    """No retry loop (mlflow's default: 7 retries with backoff, minutes): a server that drops every
    connection sees exactly one."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    attempts = []

    def drop_connections():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            attempts.append(1)
            connection.close()

    stop = threading.Event()
    thread = threading.Thread(target=drop_connections)
    thread.start()
    try:
        with pytest.raises(TrackingError, match="is not usable"):
            tracking.check_tracking_uri(f"http://127.0.0.1:{server.getsockname()[1]}")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert len(attempts) == 1


# -------------------------------------------------------------------------------------------- Tracker


def test_flatten_config_keeps_lists_as_one_value_hydra_reads_back():
    flat = tracking.flatten_config({"a": {"b": 1, "c": [3, 5]}, "e": [], "f": None, "w": [[1, 3], [3, 1]]})
    assert flat == {"a.b": 1, "a.c": "[3,5]", "e": "[]", "f": None, "w": "[[1,3],[3,1]]"}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"x={flat['w']}")
    assert parsed.value() == [[1, 3], [3, 1]]


def test_created_experiment_opens_on_the_ml_view_with_artifacts_beside_the_store(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment(tracking.experiment_id(client, "my study"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "store" / "mlartifacts" / "my study").as_uri()


def test_tracker_logs_params_metrics_and_artifacts(store, tmp_path):
    (tmp_path / "out" / "figures").mkdir(parents=True)
    (tmp_path / "out" / "metrics.json").write_text("{}")
    (tmp_path / "out" / "figures" / "roc.png").write_bytes(b"png")
    params = {"model": {"lam": 0.1, "taps": [2, 5]}, "prompt": "x" * 7000, **{f"k{i}": i for i in range(150)}}
    with Tracker(store, "t_logs", "C-dct", {"domain": "C"}) as tracker:
        tracker.log_params(params)
        tracker.log_metrics({"auroc": 0.9, "auroc_cold": float("nan"), "n": 3})
        tracker.log_metrics({"train_loss": 2.0}, step=1)
        tracker.log_metrics({"train_loss": 1.0}, step=2)
        tracker.log_artifacts(tmp_path / "out")
        tracker.log_artifact(tmp_path / "out" / "metrics.json", "extra")
    run = _run(store, tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "C-dct"
    assert run.data.params["model.lam"] == "0.1" and run.data.params["model.taps"] == "[2,5]"
    assert len(run.data.params) == 3 + 150
    assert len(run.data.params["prompt"]) == 6000 and run.data.params["prompt"].endswith("...[truncated]")
    assert run.data.metrics == {"auroc": 0.9, "n": 3.0, "train_loss": 1.0}
    assert run.data.tags["feclip.nonfinite_metrics"] == "auroc_cold"
    assert run.data.tags["domain"] == "C"
    history = MlflowClient(store).get_metric_history(tracker.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    client = MlflowClient(store)
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"extra", "figures", "metrics.json"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "figures")] == ["figures/roc.png"]


def test_failing_body_ends_run_failed_with_reason(store):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(store, "t_fail", "bad") as tracker:
            tracker.log_metrics({"auroc": 0.5})
            raise RuntimeError("boom")
    run = _run(store, tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: boom"
    assert [a.path for a in MlflowClient(store).list_artifacts(tracker.run_id)] == ["traceback.txt"]


def test_disabled_tracker_touches_nothing(tmp_path):
    with Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x", "r", enabled=False) as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 1.0})
        tracker.log_artifacts(tmp_path)
        tracker.log_artifact(tmp_path / "missing.txt")
        tracker.set_tags({"t": 1})
    assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_tracker_rejects_use_outside_with_and_non_numeric_metrics(store):
    with pytest.raises(TrackingError, match="open run"):
        Tracker(store, "t_misuse", "r").log_metrics({"m": 1.0})
    with pytest.raises(TrackingError, match="metric 'm' has non-numeric value 'high'"):
        with Tracker(store, "t_misuse", "r") as tracker:
            tracker.log_metrics({"m": "high"})


# ------------------------------------------------------------------------------------ Hydra multirun


def _sweep_config(store: str, cwd: Path, experiment: str, enabled: bool = True):
    return OmegaConf.create(
        {
            "tracking": {"uri": store, "experiment": experiment, "enabled": enabled},
            "hydra": {
                "sweep": {"dir": "multirun/2025-01-01/12-00-00"},
                "runtime": {"cwd": str(cwd)},
                "overrides": {"task": ["freq=dct,fft"]},
            },
        }
    )


def _children(store: str, parent_id: str):
    parent = _run(store, parent_id)
    found = MlflowClient(store).search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return {run.info.run_name: run for run in found}


def _job(store: str, experiment: str, sweep_dir: Path, name: str, fail: bool = False) -> None:
    """A job of the sweep: its run under the parent and its folder's run.json (what the counts read)."""
    parent = tracking.parent_run_id_for_sweep(sweep_dir)
    folder = sweep_dir / str(len(list(sweep_dir.glob("*/run.json"))))
    folder.mkdir(parents=True)
    update_run(folder, run_name=name, overrides=[f"x={name}"], status="RUNNING")
    try:
        with Tracker(store, experiment, name, {"domain": name}, parent_run_id=parent):
            if fail:
                raise ValueError("job failed")
    finally:
        update_run(
            folder, status="FAILED" if fail else "FINISHED", reason="ValueError: job failed" if fail else None
        )


def test_sweep_callback_parent_run_children_and_end(store, tmp_path):
    config = _sweep_config(store, tmp_path, "sweep_ok")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    sweep_dir = tmp_path / "multirun/2025-01-01/12-00-00"
    record = json.loads((sweep_dir / "mlflow_parent.json").read_text())
    parent = _run(store, record["run_id"])
    assert parent.info.status == "RUNNING" and parent.info.run_name == "sweep 2025-01-01/12-00-00"
    assert parent.data.tags["feclip.parent"] == "true"
    assert parent.data.tags["sweep_id"] == "2025-01-01/12-00-00"
    for name in ("A", "B"):
        _job(store, "sweep_ok", sweep_dir, name)
    callback.on_multirun_end(config)
    children = _children(store, record["run_id"])
    assert sorted(children) == ["A", "B"]
    assert all(child.data.tags["sweep_id"] == "2025-01-01/12-00-00" for child in children.values())
    parent = _run(store, record["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["feclip.children_finished"] == "2"
    assert callback._exit_hook is None  # the abort hook was unregistered


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_sweep_parent_carries_the_comparison_figure_once_and_no_one_bar_metrics(store, tmp_path):
    config = _sweep_config(store, tmp_path, "sweep_study")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    sweep_dir = tmp_path / "multirun/2025-01-01/12-00-00"
    for index, (variant, auroc) in enumerate([("dct", 0.8), ("fft", 0.7)]):
        folder = sweep_dir / str(index)
        folder.mkdir(parents=True)
        tags = {"domain": "C", "variant": variant, "method": "feclip", "feclip.random_init": "true"}
        update_run(folder, run_name=f"C-{variant}", status="FINISHED", tags=tags)
        metrics = {"auroc": auroc, "auroc_ci_lo": auroc - 0.05, "auroc_ci_hi": auroc + 0.05}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    callback.on_multirun_end(config)
    assert (sweep_dir / "report" / "comparison.png").stat().st_size > 0
    parent = _run(store, tracking.parent_run_id_for_sweep(sweep_dir))
    files = _artifact_files(MlflowClient(store), parent.info.run_id)
    assert [f for f in files if f.endswith(".png")] == ["report/comparison.png"]  # once, with the report
    assert len(files) == len(set(files)) and "report/report.md" in files
    assert parent.data.metrics == {}  # MLflow's charts compare runs: the children carry the metrics


def test_sweep_parent_fails_when_a_child_failed(store, tmp_path):
    config = _sweep_config(store, tmp_path, "sweep_child_failed")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    sweep_dir = tmp_path / "multirun/2025-01-01/12-00-00"
    _job(store, "sweep_child_failed", sweep_dir, "A")
    with pytest.raises(ValueError, match="job failed"):
        _job(store, "sweep_child_failed", sweep_dir, "B", fail=True)
    callback.on_multirun_end(config)
    parent = _run(store, tracking.parent_run_id_for_sweep(sweep_dir))
    assert parent.info.status == "FAILED"
    counts = [parent.data.tags[f"feclip.children_{k}"] for k in ("finished", "failed", "never_started")]
    assert counts == ["1", "1", "0"]


def test_sweep_counts_jobs_that_never_started(store, tmp_path, capsys):
    config = _sweep_config(store, tmp_path, "sweep_missing")
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    sweep_dir = tmp_path / "multirun/2025-01-01/12-00-00"
    _job(store, "sweep_missing", sweep_dir, "A")  # freq=dct,fft: 2 jobs expected, 1 ran
    callback.on_multirun_end(config)
    parent = _run(store, tracking.parent_run_id_for_sweep(sweep_dir))
    assert parent.info.status == "FAILED" and parent.data.tags["feclip.children_never_started"] == "1"
    assert "1 finished, 1 never-started" in capsys.readouterr().out and sweep_exit_code() == 1


def test_sweep_disabled_creates_no_parent_run(store, tmp_path):
    callback = MlflowSweepCallback()
    callback.on_multirun_start(_sweep_config(store, tmp_path, "sweep_off", enabled=False))
    atexit.unregister(callback._exit_hook)  # the sweep is not ended here: no end-of-session report for it
    sweep_dir = tmp_path / "multirun/2025-01-01/12-00-00"
    assert json.loads((sweep_dir / "sweep.json").read_text())["jobs"] == 2  # the local record is kept
    assert tracking.parent_run_id_for_sweep(sweep_dir) is None
    assert MlflowClient(store).get_experiment_by_name("sweep_off") is None


def test_parent_record_must_be_json(tmp_path):
    (tmp_path / "mlflow_parent.json").write_text("not json")
    with pytest.raises(TrackingError, match="mlflow_parent.json is not a parent-run record"):
        tracking.parent_run_id_for_sweep(tmp_path)


HYDRA_APP = """
import hydra
from feclip.tracking import JobInfo, Tracker, resolve_tracking_uri

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    job = JobInfo.from_hydra(cfg)
    with Tracker(resolve_tracking_uri(cfg.tracking.uri), cfg.tracking.experiment, job.run_name,
                 {"variant": job.variant}, parent_run_id=job.parent_run_id):
        if cfg.lam == 0.5:
            raise RuntimeError("bad lam")

main()
"""
HYDRA_CONFIG = """
lam: 0.1
domain: C
tracking: {uri: "sqlite:///mlflow.db", experiment: hydra_sweep, enabled: true}
hydra:
  job: {chdir: true}
  sweep: {dir: "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}", subdir: "${hydra.job.num}"}
  callbacks: {mlflow_sweep: {_target_: feclip.tracking.MlflowSweepCallback}}
"""


def test_real_hydra_multirun_nests_jobs_and_fails_parent_on_abort(tmp_path):
    """Basic launcher, cwd changed per job (chdir): job 0 succeeds, job 1 raises -> Hydra aborts the sweep
    without on_multirun_end -> the exit hook ends the parent FAILED."""
    (tmp_path / "app.py").write_text(HYDRA_APP)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(HYDRA_CONFIG))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "app.py", "-m", "lam=0.1,0.5"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "bad lam" in done.stderr
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (record,) = tmp_path.glob("multirun/*/*/mlflow_parent.json")
    parent_id = json.loads(record.read_text())["run_id"]
    children = _children(uri, parent_id)
    assert {name: run.info.status for name, run in children.items()} == {
        "C": "FINISHED",
        "C-lam=0.5": "FAILED",
    }
    assert children["C-lam=0.5"].data.tags["variant"] == "lam=0.5"
    parent = _run(uri, parent_id)
    assert parent.info.status == "FAILED" and "without on_multirun_end" in parent.data.tags["failure_reason"]


# ------------------------------------------------------------------------------------- names, job info


@pytest.mark.parametrize(
    ("overrides", "name", "variant"),
    [
        ([], "C-feclip·dct", "feclip·dct"),
        (["freq=fft", "domain=A"], "A-feclip·fft", "feclip·fft"),
        (
            ["model.lam=0.3", "seed=2", "freq=horizontal"],
            "C-feclip·horizontal-lam=0.3-seed=2",
            "feclip·horizontal-lam=0.3",
        ),
        (["freq.lfs.window=[1,5]"], "C-feclip·dct-window=1,5", "feclip·dct-window=1,5"),
        (
            ["method=patchcore", "method.coreset_ratio=0.01"],
            "C-patchcore·tiny-coreset_ratio=0.01",
            "patchcore·tiny-coreset_ratio=0.01",
        ),
        (
            ["method=patchcore", "method.backbone=tiny_resnet"],
            "C-patchcore·tiny_resnet",
            "patchcore·tiny_resnet",
        ),
        (["method=winclip", "prompt=winclip"], "C-winclip·winclip", "winclip·winclip"),
        (
            ["method=patchcore", "fewshot=cpd", "gating=p90"],
            "C-patchcore·tiny-p90-cpd",
            "patchcore·tiny-p90-cpd",
        ),
        (
            ["aux.max_normals=300", "train.epochs=2", "device=cpu", "tracking.experiment=x", "data.root=/d"],
            "C-feclip·dct",
            "feclip·dct",
        ),
    ],
)
def test_names_come_from_the_resolved_config(overrides, name, variant):
    job = job_info(*overrides)
    assert (job.run_name, job.variant) == (name, variant)


@pytest.mark.parametrize(
    "overrides",
    [
        ["freq=fft"],
        ["model=fc_clip_init", "model.lam=0.5", "prompt=winclip", "backbone=vit_b16", "aux=none"],
        ["aux.faults_per_normal=2.0", "train.lr=0.1", "fewshot.weight_map=2.0"],
        ["tracking=off", "device=cpu", "precision=fp32", "method.chunk_size=64", "hydra/launcher=joblib"],
    ],
)
def test_what_patchcore_does_not_read_never_names_it(overrides):
    """The issue's grid: PatchCore with freq=fft was `C-off-fft-patchcore` / variant `fft`."""
    job = job_info("method=patchcore", *overrides)
    assert (job.run_name, job.variant) == ("C-patchcore·tiny", "patchcore·tiny")
    assert set(job.choices) >= {"freq", "tracking"}  # what was chosen is kept; the tags say what is read


def test_tracking_off_and_where_a_job_runs_never_name_it():
    for method in ("feclip", "patchcore", "winclip"):
        plain = job_info(f"method={method}")
        elsewhere = job_info(f"method={method}", "tracking=off", "device=cpu", "precision=bf16", "seed=0")
        assert elsewhere.run_name == plain.run_name and "off" not in elsewhere.run_name


def test_identical_configs_get_identical_names_however_typed():
    assert job_info("freq=dct").run_name == job_info().run_name == "C-feclip·dct"
    preset = job_info("experiment=hdmap_horizontal")
    typed = job_info("freq=horizontal", "fewshot=cpd")
    assert preset.run_name == typed.run_name == "C-feclip·horizontal-cpd" and preset.variant == typed.variant


def test_a_long_variant_is_whole_in_its_run_name():
    job = job_info("experiment=cpd_patchcore")
    assert job.run_name == f"C-{job.variant}-seed=42" and job.variant.startswith(
        "patchcore·dinov2_vitb14-cpd-"
    )
    assert len(job.variant) == 64


def test_an_option_of_a_users_config_folder_names_the_run(tmp_path):
    """`feclip run hydra.searchpath=[file:///my/conf] freq=mine`: the name's base config finds `mine` too."""
    (tmp_path / "freq").mkdir()
    (tmp_path / "freq" / "mine.yaml").write_text("defaults:\n  - dct\n  - _self_\nlfs:\n  window: [1, 5]\n")
    job = job_info(f"hydra.searchpath=[file://{tmp_path}]", "freq=mine", "domain=A")
    assert (job.run_name, job.variant) == ("A-feclip·mine", "feclip·mine")


def test_a_config_without_its_group_choices_is_named_by_its_values():
    """The Python API's composed config (no `hydra` node): what differs from the default config."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        named = [JobInfo.from_config(compose(config_name="config", overrides=o)) for o in ([], ["freq=fft"])]
    assert [(job.run_name, job.variant) for job in named] == [
        ("C-feclip·default", "feclip·default"),
        ("C-feclip·transform=fft", "feclip·transform=fft"),
    ]


def test_long_run_names_are_shortened_stably():
    parts = {
        "domain": "A",
        "choices": [],
        "values": [f"option_{i}=value_{i}" for i in range(20)],
        "seed": None,
    }
    name = tracking.run_name({**parts, "method": None})
    assert len(name) == 80 and name == tracking.run_name({**parts, "method": None})


def test_job_info_finds_the_parent_of_a_sweep(tmp_path):
    sweep_dir = tmp_path / "multirun/d/t"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "mlflow_parent.json").write_text(json.dumps({"run_id": "abc"}))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["domain=B", "freq=fft"], return_hydra_config=True)
        cfg.hydra.mode, cfg.hydra.sweep.dir, cfg.hydra.runtime.cwd = "MULTIRUN", "multirun/d/t", str(tmp_path)
        job = JobInfo.from_hydra(cfg, cfg.hydra, reads=job_reads(cfg))
        assert (job.run_name, job.variant, job.parent_run_id, job.sweep_dir) == (
            "B-feclip·fft",
            "feclip·fft",
            "abc",
            str(sweep_dir),
        )
        cfg.hydra.mode = "RUN"
        assert JobInfo.from_hydra(cfg, cfg.hydra).parent_run_id is None


def job_info(*overrides: str) -> JobInfo:
    """The JobInfo of a job composed from `overrides` (as run.py would name it)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        return JobInfo.from_hydra(cfg, cfg.hydra, reads=job_reads(cfg))


# --------------------------------------------------------------------------------------- real server


def test_tracker_over_http_with_real_server(mlflow_server, tmp_path):  # noqa: F811 (fixture)
    tracking.check_tracking_uri(mlflow_server.uri)
    (tmp_path / "scores.csv").write_text("score\n0.5\n")
    with Tracker(mlflow_server.uri, "http_exp", "C-dct", {"domain": "C"}) as tracker:
        tracker.log_params({"model": {"lam": 0.1}})
        tracker.log_metrics({"auroc": 0.75})
        tracker.log_artifacts(tmp_path)
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "C-dct"
    assert run.data.params == {"model.lam": "0.1"} and run.data.metrics == {"auroc": 0.75}
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["scores.csv"]


@pytest.mark.parametrize("name", ["../x", "../../x", "..", "{tmp}/absolute"])
def test_experiment_names_never_become_paths_outside_mlartifacts(tmp_path, name):
    """tracking.experiment='../../x' (or an absolute name) used to write artifacts outside mlartifacts/."""
    name = name.format(tmp=tmp_path)
    (tmp_path / "artifact.txt").write_text("x")
    with Tracker(f"sqlite:///{tmp_path}/store/mlflow.db", name, "r") as tracker:
        tracker.log_artifact(tmp_path / "artifact.txt")
    (logged,) = [p for p in tmp_path.rglob("artifact.txt") if p != tmp_path / "artifact.txt"]
    assert (tmp_path / "store" / "mlartifacts") in logged.parents
    assert len(logged.relative_to(tmp_path / "store" / "mlartifacts").parts) == 4  # <name>/<run>/artifacts/
