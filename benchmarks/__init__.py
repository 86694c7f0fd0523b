"""Benchmarks of the core (not part of the test run): ``python -m benchmarks --help``."""
