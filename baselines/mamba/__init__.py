"""MAMBA (Egorov & Shpilman 2022): a DreamerV2-style world model for many agents; see docs/mamba.md."""
