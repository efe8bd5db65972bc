"""The runtime layer: load a model package and predict from raw inputs.

``kiln.runtime.load(path)`` is the one way every stage (evaluate, serve, monitor) runs a package;
``load_classifier`` and ``load_recommender`` load one kind only and refuse a package of another
task with a ``PackageError``.
"""

from kiln.runtime.package import read_manifest
from kiln.runtime.predictor import Predictor, load, load_classifier
from kiln.runtime.recommender import Recommender, load_recommender

__all__ = ["Predictor", "Recommender", "load", "load_classifier", "load_recommender", "read_manifest"]
