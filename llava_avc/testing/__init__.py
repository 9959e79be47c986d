"""Tooling for tests, demos and benchmarks: offline random checkpoints (`tiny`). Nothing in the
product imports it; it builds checkpoints in the backends' formats with their model classes."""
