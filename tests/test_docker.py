"""The team deployment files in docker/, checked without a Docker engine (PyYAML only).

* docker-compose.yml: parses; services reference only defined volumes, networks and services;
  every ``${VAR}`` is defined in .env.example, which holds placeholders, not secrets;
  healthchecks on every service, ``depends_on: service_healthy`` only on services that have one;
  GPU reservations on the workers; the MLflow command is an ``ablate server`` invocation that the
  real argument parser and :class:`experiments.server.ServerSettings` accept.
* Dockerfile: pins the same torch / torchvision as pyproject.toml.
* ray-cluster.yaml: valid for ``ray up`` (Ray's own prepare + schema validation).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from experiments.store import redaction as R
from experiments import server as S

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR; `$$` is a literal dollar.
VAR_RE = re.compile(r"(?<!\$)\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?])[^}]*)?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def load_env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=VALUE: {line!r}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f".env.example: bad name {key!r}"
        env[key] = value
    return env


def substitute(value, env: dict[str, str]):
    """Compose's variable interpolation, applied to every string of a parsed document."""
    if isinstance(value, dict):
        return {k: substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env) for v in value]
    if isinstance(value, str):
        out = VAR_RE.sub(lambda m: env[m["braced"] or m["bare"]], value)
        return out.replace("$$", "$")
    return value


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    doc = yaml.safe_load(compose_text)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return substitute(doc, load_env_example())


def _named_volume(source: str) -> bool:
    return not source.startswith(("/", ".", "~", "$"))


def _volume_sources(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2:
                out.append(parts[0])
        elif isinstance(v, dict) and v.get("type", "volume") == "volume" and v.get("source"):
            out.append(v["source"])
    return out


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_variable_is_defined_in_env_example(compose_text):
    # variables in the parsed document (compose does not interpolate comments)
    used = {m["braced"] or m["bare"] for text in _strings(yaml.safe_load(compose_text)) for m in VAR_RE.finditer(text)}
    env = load_env_example()
    assert used, "the compose file takes nothing from .env?"
    missing = sorted(used - set(env))
    assert not missing, f"used in docker-compose.yml but not defined in .env.example: {missing}"


def test_env_example_holds_placeholders_not_secrets():
    env = load_env_example()
    for key, value in env.items():
        if R.is_secret_key(key) or key.endswith("_TOKEN"):
            assert "CHANGE_ME" in value, f"{key} in .env.example must be a CHANGE_ME placeholder, not a value"
    # a deployment started from the unedited example refuses to come up
    with pytest.raises(S.ServerConfigError, match="placeholder"):
        S.admin_credentials({S.ENV_ADMIN_PASSWORD: env["ABLATE_ADMIN_PASSWORD"]})


def test_references_are_defined(compose):
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {})
    for name, svc in services.items():
        for source in _volume_sources(svc):
            if _named_volume(source):
                assert source in volumes, f"{name}: volume {source!r} is not declared under volumes:"
        nets = svc.get("networks", [])
        for net in nets if isinstance(nets, list) else list(nets):
            assert net in networks, f"{name}: network {net!r} is not declared under networks:"
        if "network_mode" in svc:
            assert "networks" not in svc and "ports" not in svc, f"{name}: network_mode excludes networks/ports"
        deps = svc.get("depends_on", {})
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services and dep != name, f"{name}: depends_on unknown service {dep!r}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
    # every declared volume is used (a typo would otherwise create an empty, unused volume)
    used = {s for svc in services.values() for s in _volume_sources(svc) if _named_volume(s)}
    assert used == volumes


def test_services_and_healthchecks(compose):
    services = compose["services"]
    assert {"postgres", "minio", "minio-bucket", "mlflow", "ray-head", "ray-gpu-worker"} <= set(services)
    awaited = {dep for svc in services.values() if isinstance(svc.get("depends_on"), dict)
               for dep, cond in svc["depends_on"].items() if cond.get("condition") == "service_completed_successfully"}
    for name, svc in services.items():
        if name in awaited:  # a one-shot job (the bucket's creation): it exits, others wait for its success
            assert svc.get("restart") == "no", f"{name}: a one-shot job must not restart"
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_gpu_reservations_on_workers(compose):
    workers = [n for n in compose["services"] if "worker" in n]
    assert workers
    for name in workers:
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), name
    assert "deploy" not in compose["services"]["mlflow"]  # the server needs no GPU


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate")
    S.add_server_parser(parser.add_subparsers(dest="command"))
    return parser


def test_mlflow_command_is_the_tested_ablate_server_invocation(compose):
    svc = compose["services"]["mlflow"]
    command = svc["command"]
    assert isinstance(command, list) and command[:2] == ["ablate", "server"]
    args = _server_parser().parse_args(command[1:])  # SystemExit on an unknown or malformed flag
    assert args.auth, "the team server runs with basic auth"
    assert args.host == "0.0.0.0" and args.backend_store_uri is None  # the URL with its password comes from env
    env = svc["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    hosts = [h for h in (args.allowed_hosts or "").split(",") if h]
    settings = S.ServerSettings(env["MLFLOW_BACKEND_STORE_URI"], args.artifacts_destination, args.host, args.port,
                                args.auth, args.workers, tuple(hosts), env[S.ENV_AUTH_DB_URI])
    assert settings.auth_db_uri != settings.backend_store_uri
    assert "mlflow" in hosts  # containers reach it by service name
    # the artifacts go to the compose file's S3 server (MinIO), its bucket made before the server starts;
    # the keys reach the server through the environment only; the published port is the server's port
    assert args.artifacts_destination == f"s3://{compose['services']['minio-bucket']['environment']['S3_BUCKET']}/mlartifacts"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == compose["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert svc["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    s3_secret = compose["services"]["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert not any(s3_secret in str(c) for c in (*command, *compose["services"]["minio-bucket"]["command"]))
    assert any(str(p).endswith(f":{args.port}") for p in svc["ports"])
    assert f":{args.port}/health" in " ".join(svc["healthcheck"]["test"])
    # the admin password reaches the server through the environment only
    assert S.ENV_ADMIN_PASSWORD in env and not any("password" in str(c).lower() for c in command)


def test_ray_services(compose):
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-gpu-worker"]
    head_cmd, worker_cmd = " ".join(head["command"]), " ".join(worker["command"])
    assert head_cmd.startswith("ray start --head") and "--ray-client-server-port=10001" in head_cmd
    assert worker_cmd.startswith("ray start --address=")
    for svc in (head, worker):
        assert svc["environment"]["RAY_AUTH_MODE"] == "token" and svc["environment"]["RAY_AUTH_TOKEN"]
        assert any(v.endswith(":/shared") for v in svc["volumes"])  # the data sets
        # checkpoints in the bucket, reached from every machine with the standard variables
        assert svc["environment"]["ABLATE_STORAGE_PATH"].startswith("s3://")
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(svc["environment"])


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)", req)
        if m:
            out[m[1].lower()] = m[2]
    return out


def test_dockerfile_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    text = (DOCKER / "Dockerfile").read_text()
    for package in ("torch", "torchvision"):
        assert package in pins, f"pyproject.toml does not pin {package}"
        found = set(re.findall(rf"[\"'\s]{package}==([A-Za-z0-9_.+\-]+)", text))
        assert found == {pins[package]}, f"Dockerfile pins {package} to {found}, pyproject.toml to {pins[package]}"
    assert re.search(r"pip install \.", text), "the Dockerfile must install the project itself (same pins)"
    version = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", text)
    minimum = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert version and minimum and (int(version[1]), int(version[2])) >= (int(minimum[1]), int(minimum[2]))


def test_ray_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    prepared = prepare_config(config)  # what `ray up` does before validating
    validate_config(prepared)
    assert config["docker"]["image"] and "--gpus all" in config["docker"]["worker_run_options"]
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--ray-client-server-port=10001" in head and "--num-gpus=0" in head
    assert any("ray start --address=" in c for c in config["worker_start_ray_commands"])
    assert not any("RAY_AUTH_TOKEN=" in str(o) for o in config["docker"]["run_options"])  # secrets stay off the YAML


def test_readme_covers_the_operations():
    text = (DOCKER / "README.md").read_text()
    for needle in ("docker compose up", "--tracking-uri http://", "--address ray://", "--storage-path /shared",
                   "pg_dump", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN",
                   "ray up docker/ray-cluster.yaml"):
        assert needle in text, f"docker/README.md does not mention {needle!r}"
