"""``python -m bench [NAME ...] [--quick] [--no-write]``: run benchmarks, rewrite BENCHMARKS.md.

``python -m bench device [--out DIR] [--tiny]`` is the GPU machine's check (bench/device.py), with options of its own.

Each benchmark's section in BENCHMARKS.md sits between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; sections of benchmarks not run this time are kept as they are.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench import DOC, HEADER, update_doc

BENCHES = ("multicrop", "dispatch", "overhead", "orchestration", "tracking_cost", "pruning_saved", "dedup", "s3",
           "adaptive_seeds", "readonly", "fidelity", "gpu")  # BENCHMARKS.md order


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["device"]:  # the GPU machine's one command: its own options (bench/device.py)
        from bench.device import main as device_main

        return device_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (a smoke check)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(BENCHES)}")
    text = DOC.read_text() if DOC.exists() else HEADER
    for name in args.names or BENCHES:
        t0 = time.time()
        section = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        print(section, f"\n({name}: {time.time() - t0:.0f} s)\n", flush=True)
        text = update_doc(text, name, section)
    if not args.no_write:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
