"""Baseline algorithms of the MARIE reproduction suite (one module or subpackage each)."""
