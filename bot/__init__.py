"""papers-bot: new machine-learning papers in team chat."""

__version__ = "0.1.0"
