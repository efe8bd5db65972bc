"""Kiln: from raw data to a compressed, monitored HTTP endpoint with one recipe.

Importing ``kiln`` is cheap: stages import torch and friends only when they run.
"""

__version__ = "0.1.0"
