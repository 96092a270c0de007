"""The paper's tables and figures: a registry (figures.yaml: what data makes each, built by analysis/items.py)
and the paper's own numbers as reference data (data/*.csv)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).parent
DATA = HERE / "data"


@lru_cache(maxsize=None)
def registry() -> dict:
    with open(HERE / "figures.yaml") as f:
        return yaml.safe_load(f)


def reference(name: str) -> pd.DataFrame:
    """A reference table from paper_figures/data/ (the paper's numbers, the official SMACv2 curves)."""
    path = DATA / name
    if not path.exists():
        raise FileNotFoundError(f"no reference data {name} in {DATA}")
    return pd.read_csv(path)
