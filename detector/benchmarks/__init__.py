"""Benchmarks (they print figures; they are not tests): one module per ``what=`` of
``tools/benchmark.py``, each with ``run(**kwargs) -> dict``, sharing :mod:`.common`."""
