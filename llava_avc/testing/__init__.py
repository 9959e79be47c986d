"""Tooling for tests, demos and benchmarks: offline random checkpoints, original LLaVA format (`tiny`)
and llava-hf format (`tiny_hf`). Nothing in the
product imports it; it builds checkpoints in the backends' formats with their model classes."""
