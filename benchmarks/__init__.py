"""Benchmarks: each writes JSON and prints a per-stage table."""
