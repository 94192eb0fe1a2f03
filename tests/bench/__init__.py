"""Benchmarks: speed and memory, measured side by side in one run (`make bench`).

Run with `.venv/bin/python -m tests.bench` (`--full` for the long sizes, `--only NAME` for one).
Results go to `tests/bench/results.json`; nothing here asserts on time: a benchmark reports its
figures and whether they meet the goal. Modules are not named `test_*`, so `make test` never
collects them.
"""
