"""The runtime layer: load a model package and predict from raw inputs.

``kiln.runtime.load(path)`` is the one way every stage (evaluate, serve, monitor) runs a package.
"""

from kiln.runtime.package import read_manifest
from kiln.runtime.predictor import Predictor, load

__all__ = ["Predictor", "load", "read_manifest"]
