"""Ray clusters on this machine for the tests: a head started with ``ray start --head`` and worker nodes
that join it, each with its own temporary folder (as a node on another machine has its own disk).

Every node runs in its own process group (``--block``), so exactly that node is stopped; all bind to
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping

from experiments.testing.s3server import free_port, stop_group


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _stop(proc: subprocess.Popen) -> None:
    stop_group(proc, 60)


@contextlib.contextmanager
def ray_head(env: Mapping[str, str], num_cpus: int = 2) -> Iterator[tuple[str, Path]]:
    """``ray start --head`` on loopback (token auth, Ray's default); yields (address, its temp dir)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray"))  # short: Ray's socket paths
    head = subprocess.Popen([_ray(), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(env), start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
        yield f"127.0.0.1:{port}", temp
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _node_alive(address: str, env: Mapping[str, str], temp: Path) -> bool:
    """Whether the cluster counts a live node whose raylet socket lies in ``temp`` (that node's own folder)."""
    probe = subprocess.run([sys.executable, "-c", (
        "import ray; ray.init(address=%r, log_to_driver=False); "
        "print(sorted(n['RayletSocketName'] for n in ray.nodes() if n['Alive']))") % address],
        capture_output=True, text=True, env=dict(env), timeout=120)
    return probe.returncode == 0 and str(temp.resolve()) in probe.stdout


@contextlib.contextmanager
def ray_worker(address: str, env: Mapping[str, str], num_cpus: int, temp: Path) -> Iterator[None]:
    """A worker node joining ``address`` with ``num_cpus`` CPUs and its own temp folder ``temp``.

    Returns once the cluster counts the node as alive; on exit the node is stopped and the cluster
    no longer counts it.
    """
    env = {**env, "RAY_AUTH_MODE": "token"}  # the head's token (~/.ray/auth_token)
    temp.mkdir(parents=True, exist_ok=True)
    node = subprocess.Popen([_ray(), "start", f"--address={address}", "--block", f"--num-cpus={num_cpus}",
                             "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        # the node's raylet socket appears in its own folder once it runs; then the cluster is asked once
        while time.time() < deadline and node.poll() is None and not list(temp.glob("session_*/sockets/raylet")):
            time.sleep(0.5)
        while time.time() < deadline and node.poll() is None and not _node_alive(address, env, temp):
            time.sleep(1)
        assert node.poll() is None and time.time() < deadline, "the worker node did not join the cluster"
        yield
    finally:
        _stop(node)
        deadline = time.time() + 120
        while time.time() < deadline and _node_alive(address, env, temp):
            time.sleep(2)
