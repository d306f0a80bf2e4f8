"""The command line: ``python -m cogvideox_core generate | demo | info``."""
from .main import main

__all__ = ["main"]
