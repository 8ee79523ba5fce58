"""Benchmarks of the pipeline on the local stack: `python -m benchmarks.<name>`, `fraudray bench`."""
