"""How far averaging several trained packages moves accuracy: a ceiling check for one recipe.

Every package is scored on the validation and test splits of the recipe recorded in the first
package (all must share its labels and data fingerprint, and the rebuilt splits must match
it); the script prints each package's accuracy, the accuracy of the mean of all their class
probabilities, and, for text, with ``--lexical``, the best mix of that mean with a TF-IDF +
logistic regression model fitted on the train split (the mixing weight chosen on validation,
then read on test). Validation also chose each model's best checkpoint, so only the test
column is untouched by selection.

    python bench/ensemble.py PACKAGE [PACKAGE ...] [--lexical]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import kiln.data
    from kiln.config import parse_recipe
    from kiln.runtime import load
    from kiln.runtime.package import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--lexical", action="store_true", help="also mix in a TF-IDF + logistic regression model")
    args = parser.parse_args()

    first = read_manifest(args.packages[0])
    data = kiln.data.run(parse_recipe(first["recipe"], source=f"{args.packages[0]}/kiln.json recipe"))
    if data.fingerprint != first.get("data_fingerprint"):
        raise SystemExit(f"{args.packages[0]}: its recipe's data no longer has the fingerprint it was trained on")
    splits = {"validation": data.validation, "test": data.test}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in splits}
    rows = []
    for path in args.packages:
        manifest = read_manifest(path)
        if manifest.get("data_fingerprint") != first.get("data_fingerprint"):
            raise SystemExit(f"{path}: trained on other data than {args.packages[0]}")
        predictor = load(path)
        if predictor.labels != data.label_names:
            raise SystemExit(f"{path}: labels {predictor.labels} differ from {data.label_names}")
        row = {"package": str(path)}
        for name, split in splits.items():
            inputs = list(split.inputs)
            p = np.concatenate([predictor.predict_proba(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
            probs[name].append(p)
            row[name] = round(float((p.argmax(1) == np.asarray(split.labels)).mean()), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)

    mean = {name: np.mean(probs[name], axis=0) for name in splits}
    summary = {
        "ensemble_of": len(args.packages),
        **{name: round(float((mean[name].argmax(1) == np.asarray(s.labels)).mean()), 4) for name, s in splits.items()},
    }
    print(json.dumps(summary))

    if args.lexical:
        if data.kind != "text":
            raise SystemExit("--lexical mixes in a TF-IDF model and needs a text recipe")
        from quality import text_baseline  # bench/quality.py, beside this script

        lexical = text_baseline()
        lexical.fit(list(data.train.inputs), data.train.labels)
        # predict_proba's columns follow classes_; the labels are 0..K-1, all present in train.
        assert list(lexical.classes_) == list(range(len(data.label_names)))
        lex = {name: lexical.predict_proba(list(s.inputs)) for name, s in splits.items()}

        def accuracy(name: str, weight: float) -> float:
            mixed = (1 - weight) * mean[name] + weight * lex[name]
            return float((mixed.argmax(1) == np.asarray(splits[name].labels)).mean())

        weights = [round(w, 2) for w in np.arange(0.0, 0.55, 0.05)]
        # Ties on validation go to the smaller weight (the transformer alone at 0).
        best = max(weights, key=lambda w: (accuracy("validation", w), -w))
        print(
            json.dumps(
                {
                    "lexical_alone": {name: round(accuracy(name, 1.0), 4) for name in splits},
                    "mix_weight_chosen_on_validation": best,
                    **{name: round(accuracy(name, best), 4) for name in splits},
                }
            )
        )


if __name__ == "__main__":
    main()
