"""Benchmarks: each starts what it needs and stops it. Figures, never test assertions."""
