"""int8 embedding tables for recommendation packages.

The id embedding tables hold almost all of a recommender's bytes. Each row is stored as int8
with its own fp32 scale (symmetric, ``scale = max|row| / 127``); the runtime turns them back into
floats at load, so item vectors are still precomputed once and ranking speed is unchanged while
the package shrinks about 4x. The ranking metrics of the child are measured by evaluating it
(``kiln eval``) beside its parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.compress.errors import CompressError
from kiln.compress.packaging import child_package

# Tables quantized when present: the user and item id embeddings.
TABLES = ("user_id.weight", "item_id.weight")


def quantize_embedding_tables(parent: Path, dest: Path) -> dict[str, Any]:
    """Write ``dest``: ``parent`` (a recommendation package) with int8 id embedding tables.

    Raises:
        CompressError: the parent is not a recommendation package or has no embedding tables.
    """
    from safetensors.torch import load_file, save_file

    from kiln.runtime.package import read_manifest
    from kiln.runtime.recommender import quantize_rows

    manifest = read_manifest(parent)
    if manifest.get("task") != "recommendation":
        raise CompressError(f"{parent}: int8 embedding tables apply to recommendation packages only")
    arch = manifest["architecture"]
    state = load_file(str(parent / arch["weights"]))
    present = [name for name in TABLES if name in state]
    if not present:
        raise CompressError(f"{parent}: the {arch['params']['kind']} model has no embedding tables to quantize")
    before = sum(t.numel() * t.element_size() for t in state.values())
    for name in present:
        state[name], state[f"{name}.int8_scale"] = quantize_rows(state[name].float())
    after = sum(t.numel() * t.element_size() for t in state.values())
    settings = {"tables": present, "scheme": "symmetric int8 per row"}
    with child_package(parent, manifest, dest, transformation="int8-embeddings", settings=settings) as child:
        save_file({k: v.contiguous() for k, v in state.items()}, str(child.staging / arch["weights"]))
        child.manifest.update(
            format="torch",
            precision="int8-embeddings",
            architecture=arch,
            metrics={"weights_bytes": {"parent": before, "child": after}},
        )
        return child.finalize()
