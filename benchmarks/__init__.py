"""Measurements of the node's speed and memory (not tests); ``make bench`` runs them all.

Each ``bench_*.py`` module prints one JSON object and a summary table and can be
run alone (``python -m benchmarks.bench_latency --help``);
:mod:`benchmarks.run_all` runs them in fresh processes, keeps their JSON under
``benchmarks/results/`` and regenerates ``docs/benchmarks.md`` and the charts.
"""
