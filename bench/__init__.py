"""Benchmarks: each module has ``run(quick=False) -> str`` returning a markdown section.

Every figure is a ratio against a baseline measured in the same run; ``python -m bench``
runs them and rewrites the matching sections of BENCHMARKS.md.
"""
