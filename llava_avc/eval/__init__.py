"""Benchmarks harness (POPE, MME, AMBER)."""
