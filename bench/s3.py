"""S3 storage cost: the smoke launch with Ray's storage in an S3 bucket vs on the local disk, in one run.

Candidate: ``ablate launch search_spaces/smoke.yaml --storage-path s3://bench/ray`` against a local
S3-compatible server (moto's, on 127.0.0.1: experiments/testing/s3server.py), so every checkpoint goes through
pyarrow's S3 filesystem over HTTP and every fine-tuning trial reads its backbone from the bucket.
Baseline: the same launch with the default storage (``mlruns/ray`` on the local disk). Both use the
default sqlite tracking store and a Ray of their own, in fresh folders, one after the other
(baseline first), with the same torch threads (bench.orchestration's ``run_launch``). The figure is
the ratio of the two wall times (process start to exit); ``--quick`` launches smoke.yaml's grid at
tiny sizes (bench.dedup's ``tiny_smoke``) instead.

What it does not measure: a real network. moto keeps objects in memory on this machine, so the
ratio is the cost of going through the S3 protocol (requests, multipart uploads, downloads back for
resumes and backbones), not of a slower link; on a real bucket, add the transfer of each checkpoint
(about 0.1 GB per ResNet-18 trial per epoch here) at the link's speed.

Run: ``python -m bench s3 [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from bench.orchestration import machine_line, run_launch
from experiments.testing.s3server import objects, s3_server
from experiments.testing.spaces import write_space

ROOT = Path(__file__).resolve().parent.parent


def _space(quick: bool, folder: Path, study: str) -> Path:
    if quick:
        from bench.dedup import tiny_smoke

        space = tiny_smoke()
    else:
        space = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    return write_space(folder, {**space, "name": study})


def run(quick: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="ablate-bench-s3-") as tmp:
        root = Path(tmp)
        local_dir, s3_dir = root / "local", root / "s3"
        local_dir.mkdir()
        s3_dir.mkdir()
        local = run_launch(_space(quick, local_dir, "bench_s3_local"), local_dir, "bench_s3_local", timeout=3600)
        saved = dict(os.environ)
        with s3_server(("bench",)) as env:
            os.environ.update(env)  # the launch child gets the standard variables (bench.orchestration.child_env)
            try:
                remote = run_launch(_space(quick, s3_dir, "bench_s3"), s3_dir, "bench_s3", timeout=3600,
                                    extra_args=["--storage-path", "s3://bench/ray"])
                left = objects(env, "bench", "ray/")
            finally:
                os.environ.clear()
                os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
    trials = sum(1 for t in remote.trials if t.epochs)
    checkpoints = [k for k in left if "/checkpoint_" in k]
    what = "smoke.yaml's grid at tiny sizes (`--quick`)" if quick else "`search_spaces/smoke.yaml`"
    ratio = remote.wall_s / local.wall_s
    return "\n".join([
        "## S3 storage (the smoke launch with `--storage-path s3://...` vs the local disk)",
        "",
        f"Command: `python -m bench s3{' --quick' if quick else ''}`. {machine_line()}.",
        f"Launch: {what}, {trials} trials, default sqlite tracking store, a Ray of its own, in a fresh folder; "
        "S3: moto's S3 server on 127.0.0.1 (pure Python, objects in memory: the cost of the S3 protocol and of this server, not of a network), "
        "baseline: `mlruns/ray` on the local disk. One launch each, baseline first.",
        "",
        "| storage | launch wall time (s) |",
        "|---|---|",
        f"| local disk | {local.wall_s:.1f} |",
        f"| S3 (moto, loopback) | {remote.wall_s:.1f} |",
        "",
        f"**S3 / local: {ratio:.2f}x** ({remote.wall_s - local.wall_s:+.1f} s over the launch). "
        f"After the launch the bucket's `ray/` holds "
        f"{len(left)} objects, {len(checkpoints)} of them training states (finished trials keep none).",
    ])


if __name__ == "__main__":
    print(run())
