"""Measurements of the node's speed and memory (not tests); ``make bench`` runs them all.

Each ``bench_*.py`` module prints one JSON object and a summary table and can be
run alone (``python -m benchmarks.bench_latency --help``); it also writes its own
part of the report from that JSON (``report_section``, ``report_ideas`` and, where
it has one, ``report_chart``). :mod:`benchmarks.run_all` runs them in fresh
processes, keeps their JSON under ``benchmarks/results/`` and regenerates
``docs/benchmarks.md`` and the charts from those parts.
"""
