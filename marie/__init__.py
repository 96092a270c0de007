"""MARIE reproduction suite: the MARIE world model, its baselines and the runtime they share."""
__version__ = "0.1.0"
