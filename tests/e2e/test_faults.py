"""Faults around a launch: a dead or read-only store, a cluster too small, a dead driver, leftover
checkpoints, secrets in pickles, Ray's bind address. Quick tests (no training); the end-to-end
resume after ``kill -9`` is in test_launch.py."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from experiments import cli
from experiments.store import tracking as T
from experiments.results.gc import collect, gc
from experiments.launch import Launcher, LaunchOptions, oversized_requests
from experiments.testing.spaces import tiny_space_file
from tests.experiments.server.test_server import make_pg_database  # noqa: F401 - fixture
from trainers import vocabulary as V


def _run(status: str, tags: dict[str, str], start_s: float) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=int(start_s * 1000)),
                           data=SimpleNamespace(tags=tags))


# ---------------------------------------------------------------------------
# The store: unreachable, read-only
# ---------------------------------------------------------------------------


def test_dead_tracking_server_fails_fast_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tiny_space_file(tmp_path, "dead_server")
    t0 = time.time()
    code = cli.main(["launch", str(space), "--dry-run", "--tracking-uri", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - t0 < 60
    assert "unreachable" in err and "127.0.0.1:1" in err and "Traceback" not in err


def test_read_only_store_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the schema
    capsys.readouterr()  # MLflow's own lines while it creates the schema
    space = tiny_space_file(tmp_path, "readonly")
    code = cli.main(["launch", str(space), "--tracking-uri", f"sqlite:///file:{db}?mode=ro&uri=true"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().count("\n") == 0, err
    assert "readonly database" in err and "[SQL:" not in err and "Traceback" not in err


def test_a_store_that_stops_accepting_writes_ends_the_launch_in_one_line(tmp_path, monkeypatch, capsys):
    """Mid-launch, a store failure (here raised where stage 1 would log) stops the launch cleanly:
    one line that says how to resume, the launch run ended as KILLED while the store still takes it."""
    from mlflow.exceptions import MlflowException

    from experiments.launch import LaunchError

    monkeypatch.chdir(tmp_path)
    launcher = Launcher(tiny_space_file(tmp_path, "store_dies"), LaunchOptions(register=False))
    monkeypatch.setattr(Launcher, "_init_ray", lambda self: None)

    def store_goes_read_only(self, plan, existing):
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: INSERT ...]")

    monkeypatch.setattr(Launcher, "_stage_pretrain", store_goes_read_only)
    with pytest.raises(LaunchError) as info:
        launcher.run()
    message = str(info.value)
    assert "\n" not in message and "stopped accepting writes" in message and "readonly database" in message
    assert "[SQL:" not in message
    assert "run the same command" in message and "resumes" in message
    parent = MlflowClient(launcher.tracking_uri).get_run(launcher.parent_run_id)
    assert parent.info.status == "KILLED"


# ---------------------------------------------------------------------------
# Resources beyond the cluster
# ---------------------------------------------------------------------------


def test_resources_beyond_the_machine_are_refused_at_plan_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tiny_space_file(tmp_path, "too_big")
    data = yaml.safe_load(space.read_text())
    data["pretrain"]["resources"] = {"cpu": 64}
    space.write_text(yaml.safe_dump(data))
    cpus = os.cpu_count()
    assert cli.main(["launch", str(space), "--dry-run"]) == 0  # the plan, with a warning
    out = capsys.readouterr().out
    assert f"warning: {space}: pretrain.resources.cpu: one trial asks for 64 CPUs but this machine has {cpus}" in out
    assert cli.main(["launch", str(space)]) == 2
    err = capsys.readouterr().err
    assert "pretrain.resources.cpu" in err and f"has {cpus}" in err and "--address" in err
    assert not (tmp_path / "mlruns" / "ray").exists() or not any((tmp_path / "mlruns" / "ray").glob("too_big-*"))


def test_oversized_requests_count_every_worker():
    spec = SimpleNamespace(path=Path("s.yaml"),
                           pretrain=SimpleNamespace(resources=SimpleNamespace(cpu=1.0, gpu=1.0, processes=4)),
                           finetune=SimpleNamespace(resources=SimpleNamespace(cpu=2.0, gpu=0.0, processes=1)))
    problems = oversized_requests(spec, cpus=8, gpus=2)
    assert len(problems) == 1 and "pretrain.resources.gpu" in problems[0] and "4 GPUs (1 x 4 processes)" in problems[0]
    assert oversized_requests(spec, cpus=8, gpus=4) == []


# ---------------------------------------------------------------------------
# A dead driver: its launch run is ended and its trials move to the launch that resumes them
# ---------------------------------------------------------------------------


def test_launch_alive_by_pid_on_this_host_and_by_heartbeat_elsewhere():
    now = time.time()
    me = T.driver_id()
    assert T.launch_alive(_run("RUNNING", {V.TAG_DRIVER: me, V.TAG_HEARTBEAT: f"{now:.0f}"}, now))
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    host = socket.gethostname()
    assert not T.launch_alive(_run("RUNNING", {V.TAG_DRIVER: f"{host}:{dead_pid.pid}", V.TAG_HEARTBEAT: f"{now:.0f}"}, now))
    # a pid that exists but started after the driver's heartbeats is a reused pid, not the driver
    assert not T.launch_alive(_run("RUNNING", {V.TAG_DRIVER: me, V.TAG_HEARTBEAT: "1000"}, 1000))
    other = {V.TAG_DRIVER: "elsewhere:1"}
    assert T.launch_alive(_run("RUNNING", {**other, V.TAG_HEARTBEAT: f"{now - 60:.0f}"}, now - 3600))
    assert not T.launch_alive(_run("RUNNING", {**other, V.TAG_HEARTBEAT: f"{now - 3600:.0f}"}, now - 7200))
    assert not T.launch_alive(_run("KILLED", {V.TAG_DRIVER: me, V.TAG_HEARTBEAT: f"{now:.0f}"}, now))


def _dead_launch(tracker: T.Tracker, space_name: str) -> tuple[str, str]:
    """A launch run left RUNNING by a driver that no longer exists, with one RUNNING trial under it."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    parent = tracker.create_run("launch old", {V.TAG_STAGE: "launch", V.TAG_DRIVER: f"{socket.gethostname()}:{gone.pid}",
                                               V.TAG_HEARTBEAT: f"{time.time():.0f}"})
    child = tracker.create_run("trial", {V.TAG_STAGE: "pretrain", V.TAG_HASH: "h1"}, parent_run_id=parent)
    return parent, child


def test_a_new_launch_ends_a_dead_launch_and_adopts_its_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tiny_space_file(tmp_path, "takeover")
    launcher = Launcher(space, LaunchOptions())
    plan = launcher.plan()
    launcher.tracker = T.Tracker(launcher.tracking_uri, launcher.spec.name)
    old_parent, child = _dead_launch(launcher.tracker, launcher.spec.name)
    launcher.parent_run_id = launcher._parent_run(plan)
    client = launcher.tracker.client
    old = client.get_run(old_parent)
    assert old.info.status == "KILLED" and old.data.tags[V.TAG_SUPERSEDED_BY] == launcher.parent_run_id
    new = client.get_run(launcher.parent_run_id)
    assert new.data.tags[V.TAG_DRIVER] == T.driver_id() and T.launch_alive(new)
    # the trial resumes into the same run, now under the new launch, the old one remembered
    existing = client.get_run(child)
    launcher.ledger.child_run("pretrain", "trial", "h1", {"epochs": 1}, existing, {}, {})
    moved = client.get_run(child)
    assert moved.data.tags[T.PARENT_TAG] == launcher.parent_run_id
    assert moved.data.tags[V.TAG_PREVIOUS_PARENT] == old_parent
    assert client.get_run(launcher.parent_run_id).data.tags[V.TAG_RESUMED_FROM] == old_parent


def test_resume_refuses_a_launch_whose_driver_lives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tiny_space_file(tmp_path, "alive")
    launcher = Launcher(space, LaunchOptions(resume=True))
    plan = launcher.plan()
    launcher.tracker = T.Tracker(launcher.tracking_uri, launcher.spec.name)
    launcher.tracker.create_run("launch busy", {V.TAG_STAGE: "launch", V.TAG_DRIVER: T.driver_id(),
                                                V.TAG_HEARTBEAT: f"{time.time():.0f}"})
    with pytest.raises(ValueError, match="still running"):
        launcher._parent_run(plan)


def test_report_shows_a_dead_launch_s_trials_as_interrupted(tmp_path, monkeypatch):
    from experiments.results.report import collect as collect_study
    from experiments.results.report import excluded_table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = T.Tracker(uri, "dead_report")
    _dead_launch(tracker, "dead_report")
    rows = excluded_table(collect_study(uri, "dead_report")).rows
    assert [r.cells[1] for r in rows] == ["interrupted"]
    assert "again to resume" in rows[0].cells[2]


# ---------------------------------------------------------------------------
# Checkpoints no launch can resume from: ablate gc
# ---------------------------------------------------------------------------


def test_gc_keeps_only_what_an_unfinished_trial_resumes_from(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray"
    tracker = T.Tracker(uri, "gcs")
    launch = tracker.create_run("launch", {V.TAG_STAGE: "launch"})
    tracker.log_params_tags(launch, params={"storage_path": str(storage)})
    tracker.finish(launch, "KILLED")

    def trial_dir(exp: str, trial: str, n: int) -> list[Path]:
        dirs = [storage / exp / trial / f"checkpoint_{i:06d}" for i in range(n)]
        for d in dirs:
            d.mkdir(parents=True)
            (d / "state.safetensors").write_bytes(b"x" * 1000)
        return dirs

    lid = "20261208-010203-abcdef"  # a launch id: <study>-<stage>-<launch id> is a launch's folder
    done = trial_dir(f"gcs-pretrain-{lid}", "pretrain_a", 2)  # a finished trial's states
    failed = trial_dir(f"gcs-finetune-{lid}", "finetune_b", 2)  # a failed trial: resumes from its newest
    other = trial_dir(f"other-pretrain-{lid}", "pretrain_c", 1)  # another study's: never touched
    (storage / "backbones" / "h").mkdir(parents=True)
    finished = tracker.create_run("a", {V.TAG_STAGE: "pretrain", V.TAG_CHECKPOINT: str(done[1])}, parent_run_id=launch)
    tracker.finish(finished, "FINISHED")
    unfinished = tracker.create_run("b", {V.TAG_STAGE: "finetune", V.TAG_CHECKPOINT: str(failed[1])},
                                    parent_run_id=launch)
    tracker.finish(unfinished, "FAILED")
    tracker.log_text(finished, "weights", "backbone/backbone.json")  # stands for an exported / registered model

    plan = collect(uri, "gcs", tmp_path / "unused")
    assert set(plan.remove) == {storage / f"gcs-pretrain-{lid}", failed[0], storage / "backbones"}
    assert plan.keep == {failed[1]: unfinished}
    text = gc(uri, "gcs", tmp_path / "unused", dry_run=True)
    assert "would free" in text and all(p.exists() for p in (*done, *failed))
    gc(uri, "gcs", tmp_path / "unused")
    assert not (storage / f"gcs-pretrain-{lid}").exists() and not failed[0].exists() and failed[1].is_dir()
    assert other[0].is_dir()
    assert tracker.client.list_artifacts(finished, "backbone")  # the tracking store is untouched


def test_gc_refuses_while_a_launch_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = T.Tracker(uri, "busy")
    tracker.create_run("launch", {V.TAG_STAGE: "launch", V.TAG_DRIVER: T.driver_id(),
                                  V.TAG_HEARTBEAT: f"{time.time():.0f}"})
    with pytest.raises(ValueError, match="still running"):
        collect(uri, "busy", tmp_path)


# ---------------------------------------------------------------------------
# Secrets in pickles (tuner.pkl, searcher state): the Optuna URL's password stays in the environment
# ---------------------------------------------------------------------------


def test_scheduler_and_callback_pickles_hold_no_storage_password(tmp_path, monkeypatch):
    import cloudpickle

    from experiments.launch.callbacks import DriverCallback
    from experiments.pruning.pruner import make_pruner
    from experiments.pruning.scheduler import OptunaPruningScheduler
    from experiments.store.redaction import OPTUNA_STORAGE_ENV

    monkeypatch.setenv(OPTUNA_STORAGE_ENV, "")  # recorded, so that what the code under test sets is undone
    monkeypatch.delenv(OPTUNA_STORAGE_ENV)
    url = "postgresql+psycopg://ablate:Pw-in-url-93847@127.0.0.1:5432/optuna"
    sched = OptunaPruningScheduler(storage_url=url, study_name="s", pruner=make_pruner("pretrain", {"enabled": True}))
    data = pickle.dumps(sched)
    assert b"Pw-in-url-93847" not in data
    assert pickle.loads(data).storage_url == url  # read back from the environment
    assert os.environ[OPTUNA_STORAGE_ENV] == url
    plain = OptunaPruningScheduler(storage_url="sqlite:///x.db", study_name="s",
                                   pruner=make_pruner("pretrain", {"enabled": True}))
    assert pickle.loads(pickle.dumps(plain)).storage_url == "sqlite:///x.db"

    monkeypatch.chdir(tmp_path)
    launcher = Launcher(tiny_space_file(tmp_path, "pickles"), LaunchOptions(optuna_storage=url))
    callback = DriverCallback(launcher.ledger, "pretrain", {}, 1)
    assert b"Pw-in-url-93847" not in cloudpickle.dumps(callback)


@pytest.mark.postgres
def test_optuna_storage_pickle_holds_no_password(make_pg_database, monkeypatch):  # noqa: F811
    from experiments.pruning.pruner import EnvRDBStorage
    from experiments.store.redaction import OPTUNA_STORAGE_ENV

    monkeypatch.setenv(OPTUNA_STORAGE_ENV, "")  # recorded, so that what the code under test sets is undone
    monkeypatch.delenv(OPTUNA_STORAGE_ENV)
    url = make_pg_database().replace("postgres@", "postgres:Trust-ignores-this-4711@")  # trust auth
    storage = EnvRDBStorage(url)
    data = pickle.dumps(storage)
    assert b"Trust-ignores-this-4711" not in data
    restored = pickle.loads(data)
    assert restored.url == url and restored.get_all_studies() == []
    restored.engine.dispose()
    storage.engine.dispose()


# ---------------------------------------------------------------------------
# The launch's own Ray listens on loopback only
# ---------------------------------------------------------------------------

_RAY_BINDS = """
import psutil, ray
from experiments.launch import loopback_only_ray
loopback_only_ray()
ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False, num_cpus=1)
procs = [psutil.Process()] + psutil.Process().children(recursive=True)
addrs = set()
for p in procs:
    try:
        addrs |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass
print("NODE", ray.util.get_node_ip_address())
print("LISTEN", sorted(addrs))
ray.shutdown()
"""


def test_local_ray_binds_to_loopback_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _RAY_BINDS], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("NODE", "LISTEN")))
    assert lines["NODE"] == "127.0.0.1"
    listening = eval(lines["LISTEN"])  # noqa: S307 - our own subprocess's printed list
    assert listening, "no Ray process was seen listening"
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in listening), listening
