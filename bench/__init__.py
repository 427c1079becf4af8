"""Benchmarks: the node against nginx serving the same files (`make bench`, see run_all.py)."""
