"""Benchmarks: each module has ``run(quick=False) -> str`` returning a markdown section.

Every figure is a ratio against a baseline measured in the same run; ``python -m bench``
runs them and rewrites the matching sections of BENCHMARKS.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

DOC = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

`make bench` (or `python -m bench [NAME ...]`) runs every benchmark in `bench/` and rewrites
the sections below. Each figure is a ratio against a baseline measured in the same run, on the
same machine: absolute times on a shared machine are noise.
"""


def update_doc(text: str, name: str, section: str) -> str:
    """Replace (or append) the marked section of benchmark ``name``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def run_alone(name: str, doc: str, run: Callable[[bool], str], argv: Sequence[str] | None = None) -> None:
    """``python -m bench.NAME [--quick]``: one benchmark's section printed (BENCHMARKS.md left as it is)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke check)")
    print(run(parser.parse_args(argv).quick))
