"""The runtime layer: load a model package and predict from raw inputs.

``kiln.runtime.load(path)`` is the one way every stage (evaluate, serve, monitor) runs a package;
``load_classifier``, ``load_recommender`` and ``load_generator`` load one kind only and refuse a package of another
task with a ``PackageError``.
"""

from kiln.runtime.generation import Generation, Generator, load_generator
from kiln.runtime.package import read_manifest
from kiln.runtime.predictor import Predictor, load, load_classifier
from kiln.runtime.recommender import Recommender, load_recommender

__all__ = [
    "Generation",
    "Generator",
    "Predictor",
    "Recommender",
    "load",
    "load_classifier",
    "load_generator",
    "load_recommender",
    "read_manifest",
]
