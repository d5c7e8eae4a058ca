"""Benchmarks of ardir-tf (run from the repository root: ``python -m benchmarks.<name>``)."""
