"""Benchmarks of crypto-ml against in-process loops and peer frameworks (see bench/run.py)."""
