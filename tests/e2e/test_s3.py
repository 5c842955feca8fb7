"""S3-compatible storage, against a real S3 API: moto's server on 127.0.0.1 (experiments/testing/s3server.py).

* The bucket checks: a missing bucket, refused or missing credentials and an endpoint nobody answers
  on are one line each, from the check itself, from ``ablate server --artifacts-destination s3://``
  (exit 2, no database made) and from ``ablate launch --storage-path s3://`` (exit 2, no run made).
* ``ablate gc`` on a storage path in a bucket: the local rule (keep what an unfinished trial resumes
  from, delete the rest of the study's, leave other studies alone), in the bucket.
* End to end (slow), two nodes without a shared folder: a Ray head with no CPUs and a worker node
  with its own temporary folder run the trials; the tracking server's artifacts and the launch's
  checkpoints are in one bucket; the driver is killed with SIGKILL mid-fine-tuning, the worker node
  is stopped and its folder deleted, and the relaunch resumes the trial from its S3 checkpoint on a
  new node without a duplicate metric (the fine-tuning trial reads its backbone from the bucket);
  ``status`` and ``report``; the champion pulled by a client without S3 credentials, its sha256
  checked; ``gc`` emptying the bucket of training states; the secret key in no object, no store
  file, no printed line and no server log.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from experiments import server as S
from experiments.store import tracking as T
from experiments.store.objectstore import ObjectStoreError, check_bucket, split_s3
from tests.experiments.server.test_server import make_pg_database  # noqa: F401 - fixture
from tests.raycluster import ray_head, ray_worker
from experiments.testing.s3server import free_port, objects, s3_server
from experiments.testing.spaces import tiny_space, write_space
from trainers import vocabulary as V

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def s3():
    with s3_server(("team",)) as env:
        yield env


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The S3 variables in this process's environment (pyarrow reads them there), nothing else of AWS."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    return s3


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------


def test_bucket_check_names_what_to_fix(s3, tmp_path, monkeypatch):
    check_bucket("s3://team/ray", "--storage-path", s3)  # exists, credentials accepted
    with pytest.raises(ObjectStoreError, match=r"^--storage-path s3://nope/ray: bucket 'nope' does not exist at "
                                               r"http://127\.0\.0\.1:\d+; create it first"):
        check_bucket("s3://nope/ray", "--storage-path", s3)
    closed = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(ObjectStoreError, match="no S3 server answers at .* check AWS_ENDPOINT_URL"):
        check_bucket("s3://team/ray", "--storage-path", closed)
    # no keys anywhere: not in the variables, no profile files, no instance metadata
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    keyless = {k: v for k, v in s3.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with pytest.raises(ObjectStoreError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                                               "AWS_SECRET_ACCESS_KEY"):
        check_bucket("s3://team/ray", "--storage-path", keyless)
    with pytest.raises(ObjectStoreError, match="credentials do not belong in an S3 URI"):
        split_s3("s3://AKIA:secret@team/ray")


def test_keys_leave_the_environment_for_a_private_file(s3_env, monkeypatch):
    import boto3

    from experiments.store.objectstore import keys_to_private_file

    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-123")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "")  # so that the test's end takes the file's variable away
    path = keys_to_private_file()
    try:
        # Ray Tune copies these variables into every trial's runtime env, which Ray's agent logs
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(os.environ)
        assert os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(path) and path.stat().st_mode & 0o777 == 0o600
        creds = boto3.session.Session().get_credentials()
        assert (creds.access_key, creds.secret_key, creds.token) == (
            s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"], "session-token-123")
        check_bucket("s3://team/ray", "--storage-path")  # boto3 and the bucket, through the file
        assert keys_to_private_file() is None  # nothing left to move
    finally:
        path.unlink(missing_ok=True)


def test_refused_credentials_are_one_line():
    # moto checks credentials after its first request (the bucket's creation): unknown keys get a 403
    with s3_server(("locked",), {"INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as env:
        with pytest.raises(ObjectStoreError, match=r"refused these credentials for bucket 'locked' "
                                                   r"\(InvalidAccessKeyId|403"):
            check_bucket("s3://locked/a", "--artifacts-destination", env)


def test_server_refuses_a_missing_bucket_before_starting(s3_env, tmp_path, capsys):
    db = tmp_path / "store" / "mlflow.db"
    code = S.main(["--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", "s3://nope/mlartifacts",
                   "--port", str(free_port())])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "--artifacts-destination s3://nope/mlartifacts: bucket 'nope' does not exist" in err
    assert not db.exists()  # nothing was started, no database made


def test_launch_refuses_a_missing_bucket_before_anything_runs(s3, tmp_path):
    space = write_space(tmp_path, {**tiny_space("nobucket"), "storage_path": "s3://nope/ray"})  # the space's own
    proc = _cli(["launch", str(space)], tmp_path, {**os.environ, **s3}, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--storage-path s3://nope/ray: bucket 'nope' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "mlruns").rglob("*"))  # no store, no data generated, no Ray storage


# ---------------------------------------------------------------------------
# gc in a bucket
# ---------------------------------------------------------------------------


def test_gc_in_a_bucket_keeps_only_what_an_unfinished_trial_resumes_from(s3_env, tmp_path):
    import boto3

    from experiments.results.gc import collect, gc

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    root = "s3://team/gcs"
    L = "20261208-010203-abcdef"  # a launch id: ``<study>-<stage>-<launch id>`` is a launch's folder
    for key in (f"gcs-pretrain-{L}/pretrain_a/checkpoint_000000/state.safetensors",
                f"gcs-pretrain-{L}/pretrain_a/checkpoint_000001/state.safetensors",
                f"gcs-pretrain-{L}/tuner.pkl",
                f"gcs-finetune-{L}/finetune_b/checkpoint_000000/state.safetensors",
                f"gcs-finetune-{L}/finetune_b/checkpoint_000001/state.safetensors",
                f"other-pretrain-{L}/pretrain_c/checkpoint_000000/state.safetensors",
                f"gcs-pretrain-pretrain-{L}/pretrain_d/checkpoint_000000/state.safetensors",  # study gcs-pretrain's
                "backbones/h/backbone/backbone.safetensors"):
        client.put_object(Bucket="team", Key=f"gcs/{key}", Body=b"x" * 1000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = T.Tracker(uri, "gcs")
    launch = tracker.create_run("launch", {V.TAG_STAGE: "launch"})
    tracker.log_params_tags(launch, params={"storage_path": root})
    tracker.finish(launch, "KILLED")
    done = tracker.create_run("a", {V.TAG_STAGE: "pretrain",
                                    V.TAG_CHECKPOINT: f"{root}/gcs-pretrain-{L}/pretrain_a/checkpoint_000001"},
                              parent_run_id=launch)
    tracker.finish(done, "FINISHED")
    resumes = f"{root}/gcs-finetune-{L}/finetune_b/checkpoint_000001"
    failed = tracker.create_run("b", {V.TAG_STAGE: "finetune", V.TAG_CHECKPOINT: resumes}, parent_run_id=launch)
    tracker.finish(failed, "FAILED")

    plan = collect(uri, "gcs", tmp_path / "unused")
    assert set(plan.remove) == {f"{root}/gcs-pretrain-{L}", f"{root}/gcs-finetune-{L}/finetune_b/checkpoint_000000",
                                f"{root}/backbones"}
    assert plan.keep == {resumes: failed} and plan.size() == 5000
    text = gc(uri, "gcs", tmp_path / "unused", dry_run=True)
    assert "would free 4.9 KB in 3 folder(s)" in text and len(objects(s3_env, "team", "gcs/")) == 8
    gc(uri, "gcs", tmp_path / "unused")
    assert sorted(objects(s3_env, "team", "gcs/")) == [
        f"gcs/gcs-finetune-{L}/finetune_b/checkpoint_000001/state.safetensors",
        f"gcs/gcs-pretrain-pretrain-{L}/pretrain_d/checkpoint_000000/state.safetensors",
        f"gcs/other-pretrain-{L}/pretrain_c/checkpoint_000000/state.safetensors"]


def test_a_trial_copies_its_backbone_from_the_bucket_once_per_node(s3_env, tmp_path, monkeypatch):
    import boto3

    from experiments.launch.trial import local_backbone

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this "node's" temporary folder
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    for name, body in (("backbone.json", b'{"sha256": "aaa"}'), ("backbone.safetensors", b"weights-a")):
        client.put_object(Bucket="team", Key=f"ray/backbones/h1/backbone/{name}", Body=body)
    uri = "s3://team/ray/backbones/h1/backbone"
    cfg = local_backbone({"backbone": uri, "epochs": 3})
    local = Path(cfg["backbone"])
    assert cfg["epochs"] == 3 and local.is_relative_to(tmp_path) and (local / "backbone.safetensors").read_bytes() == b"weights-a"
    assert local_backbone({"backbone": str(local)}) == {"backbone": str(local)}  # a local folder stays as it is
    client.put_object(Bucket="team", Key="ray/backbones/h1/backbone/backbone.safetensors", Body=b"changed")
    assert (Path(local_backbone({"backbone": uri})["backbone"]) / "backbone.safetensors").read_bytes() == b"weights-a"
    # the same location with another backbone (its record differs): the node's copy is replaced
    client.put_object(Bucket="team", Key="ray/backbones/h1/backbone/backbone.json", Body=b'{"sha256": "bbb"}')
    assert (Path(local_backbone({"backbone": uri})["backbone"]) / "backbone.safetensors").read_bytes() == b"changed"
    with pytest.raises(FileNotFoundError, match="is not in the object store"):
        local_backbone({"backbone": "s3://team/ray/backbones/gone/backbone"})


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


def _finetune_checkpoint(db: Path) -> str | None:
    """The ``ablate.checkpoint`` tag of a fine-tuning run, once one has it."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute(
                "select c.value from tags c join tags s on c.run_uuid = s.run_uuid where c.key = ? and s.key = ? "
                "and s.value = 'finetune'", (V.TAG_CHECKPOINT, V.TAG_STAGE)).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _files_with(root: Path, needles: dict[str, bytes]) -> list[str]:
    """``path contains LABEL`` for every file under ``root`` holding one of the byte strings."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        hits += [f"{path.relative_to(root)} contains {label}" for label, n in needles.items() if n in data]
    return hits


@pytest.mark.slow
def test_team_study_on_s3_resumes_pulls_collects_and_leaks_no_credential(s3, tmp_path, monkeypatch, make_pg_database):
    """Team mode end to end, in one launch: an `ablate server --auth` with its artifacts in the bucket,
    `ablate launch --address` on a cluster started with `ray start` (a head with no CPUs, so every trial runs
    on a worker node with its own temporary folder), checkpoints in the bucket, the Optuna study in
    PostgreSQL. The driver is killed mid-fine-tuning, that node stopped and its folder deleted, and the
    relaunch resumes on a new node from the S3 checkpoint. Afterwards the admin password (in the tracking
    URI, MLFLOW_TRACKING_PASSWORD and the Optuna URL) and the S3 secret key are in no bucket object
    (tuner.pkl included), no file of the store, the launch's folder, the pulled model or any Ray node's
    temporary folder, in nothing printed and not in the server log."""
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        msg = "MLflow basic auth needs Flask-WTF: install the `mlflow[auth]` extra"
        if IN_CI:
            pytest.fail(msg + " (CI=true: this must be available)")
        pytest.skip(msg)
    from mlflow.tracking import MlflowClient

    from trainers.vocabulary import TAG_WEIGHTS_SHA
    from trainers.checkpoints import sha256_file
    from trainers.detection import load_detector

    secret, password = s3["AWS_SECRET_ACCESS_KEY"], "SECRETPW-" + uuid.uuid4().hex[:12]
    needles = {"the S3 secret key": secret.encode(), "the password": password.encode(),
               "a Basic auth header": base64.b64encode(f"admin:{password}".encode())}
    space = tiny_space("s3study", pretrain_epochs=2)
    space["finetune"]["fixed"]["epochs"] = 2  # killed after the first epoch's checkpoint
    space = write_space(tmp_path, space)
    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_TRACKING_")) and k not in (S.ENV_ADMIN_USERNAME,)}
    base.pop(S.ENV_ADMIN_PASSWORD, None)
    nodes_env = {**base, **s3}  # Ray nodes: the bucket's keys, nothing of the server
    client_env = {**base, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    # the launch: both; the Optuna URL with the password (trust auth ignores it): the scheduler is pickled
    launch_env = {**nodes_env, **client_env, "ABLATE_OPTUNA_STORAGE":
                  make_pg_database().replace("postgres@", f"postgres:{password}@")}
    printed: list[str] = []
    problems: list[str] = []
    node_a, node_b = (Path(tempfile.mkdtemp(prefix=f"ray{n}")) for n in "AB")  # short: Ray's socket paths
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, node_a, ignore_errors=True)
        stack.callback(shutil.rmtree, node_b, ignore_errors=True)
        server = stack.enter_context(S.start_server(
            f"sqlite:///{store}/mlflow.db", "s3://team/mlartifacts", port=free_port(), workers=1, auth=True,
            log_path=tmp_path / "server.log", environ={**nodes_env, S.ENV_ADMIN_PASSWORD: password}))
        address, head_temp = stack.enter_context(ray_head(nodes_env, num_cpus=0))
        launch = ["launch", str(space), "--tracking-uri", server.url.replace("http://", f"http://admin:{password}@"),
                  "--storage-path", "s3://team/ray", "--address", address]
        with ray_worker(address, nodes_env, 2, node_a):
            log = (tmp_path / "first_launch.log").open("w")
            proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *launch], cwd=work, stdout=log,
                                    stderr=subprocess.STDOUT, env={**launch_env, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True)
            deadline, tagged = time.time() + 600, None
            while time.time() < deadline and proc.poll() is None and not (
                    tagged := _finetune_checkpoint(store / "mlflow.db")):
                time.sleep(0.5)
            assert proc.poll() is None, "the launch ended before it could be interrupted:\n" + \
                (tmp_path / "first_launch.log").read_text()[-3000:]
            os.killpg(proc.pid, signal.SIGKILL)  # mid-fine-tuning, no clean-up at all
            proc.wait(timeout=60)
            log.close()
        problems += [f"Ray node A: {hit}" for hit in _files_with(node_a, needles)]
        shutil.rmtree(node_a)  # that node is gone, and its disk with it
        printed.append((tmp_path / "first_launch.log").read_text())
        assert tagged.startswith("s3://team/ray/s3study-finetune-"), tagged  # the state a relaunch resumes from
        # the fine-tuning trial read its backbone from the bucket, not from a folder of the driver's disk
        assert any(k.startswith("ray/backbones/") and k.endswith("/backbone.safetensors")
                   for k in objects(s3, "team", "ray/"))

        stack.enter_context(ray_worker(address, nodes_env, 2, node_b))  # a new node resumes the trial
        done = _cli([*launch, "--resume"], work, launch_env)
        printed.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "from s3://team/ray/s3study-finetune-" in done.stdout  # `finetune resume NAME into run ID from ...`
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(tracking_uri=server.url)
        exp = client.get_experiment_by_name("s3study")
        runs = {stage: client.search_runs([exp.experiment_id], f"tags.`{V.TAG_STAGE}` = '{stage}'")
                for stage in ("launch", "pretrain", "finetune")}
        assert [len(runs[s]) for s in ("launch", "pretrain", "finetune")] == [1, 1, 1]  # continued, no duplicates
        assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)
        ft = runs["finetune"][0]
        assert V.TAG_CHECKPOINT not in ft.data.tags
        steps = [m.step for m in client.get_metric_history(ft.info.run_id, "det/loss")]
        assert sorted(steps) == sorted(set(steps)) == [1, 2], steps  # resumed from S3, not restarted
        pre_steps = [m.step for m in client.get_metric_history(runs["pretrain"][0].info.run_id, "swav/loss")]
        assert sorted(pre_steps) == [1, 2]
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied: clients never see the bucket
        bucket = {k: v for k, v in objects(s3, "team").items() if k.startswith(("ray/", "mlartifacts/"))}
        assert any(k.startswith("mlartifacts/") and k.endswith("detector.safetensors") for k in bucket)
        assert any(k.startswith("ray/s3study-finetune-") and k.endswith("tuner.pkl") for k in bucket)
        assert not [k for k in bucket if "/checkpoint_" in k]  # finished trials keep no training state
        assert not (store / "artifacts").exists()  # nothing of the artifacts on the server's disk

        for args in (["status", "s3study"], ["report", "s3study", "--no-log"]):
            out = _cli([*args, "--tracking-uri", server.url], work, client_env, timeout=300)
            printed.append(out.stdout + out.stderr)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "s3study" in printed[-2] and "AP@0.5" in printed[-1]

        # a client with the tracking credentials and no S3 variables at all pulls the champion through the server
        pulled = _cli(["pull", "s3study-detector@champion", "--dest", str(tmp_path / "pulled"),
                       "--tracking-uri", server.url], work, client_env, timeout=300)
        printed.append(pulled.stdout + pulled.stderr)
        assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
        version = client.get_model_version_by_alias("s3study-detector", "champion")
        assert sha256_file(tmp_path / "pulled" / "detector.safetensors") == version.tags[TAG_WEIGHTS_SHA]
        load_detector(tmp_path / "pulled")

        # no credential in any object of the bucket (tuner.pkl, trial configs, artifacts, model versions)
        problems += [f"s3://team/{k} contains {label}" for k, body in bucket.items()
                     for label, n in needles.items() if n in body]
        problems += [f"Ray head: {hit}" for hit in _files_with(head_temp, needles)]
        problems += [f"Ray node B: {hit}" for hit in _files_with(node_b, needles)]
        gc_out = _cli(["gc", "s3study", "--tracking-uri", server.url], work, {**client_env, **s3}, timeout=300)
        printed.append(gc_out.stdout + gc_out.stderr)
        assert gc_out.returncode == 0, gc_out.stdout[-2000:] + gc_out.stderr[-2000:]
        assert "deleted s3://team/ray/s3study-pretrain-" in gc_out.stdout
        left = objects(s3, "team", "ray/")
        assert not left, sorted(left)[:5]  # every launch folder of the study and the backbone copies
        assert objects(s3, "team", "mlartifacts/"), "gc never touches the tracking store's artifacts"
    problems += [f"store: {hit}" for hit in _files_with(store, needles)]
    problems += [f"launch folder: {hit}" for hit in _files_with(work, needles)]
    problems += [f"pulled: {hit}" for hit in _files_with(tmp_path / "pulled", needles)]
    problems += [f"printed: {label}" for text in printed for label, n in needles.items() if n.decode() in text]
    log_text = (tmp_path / "server.log").read_text()
    problems += [f"server log: {label}" for label, n in needles.items() if n.decode() in log_text]
    assert not problems, "a credential leaked:\n" + "\n".join(problems)
