"""Vocabulary trimming: keep only the embedding rows of the tokens a task's texts use.

A pretrained encoder's vocabulary is sized for all of its pretraining text: MiniLM-L6's
30,522 x 384 word embeddings hold half of its weights, while one task's texts use a fraction of
those tokens. This step tokenizes the training texts, keeps the tokens they use (at least
``min_frequency`` times), the special tokens and every single-character piece (so any word can
still be spelt out), renumbers the WordPiece vocabulary and slices the embedding matrix to
match. A word whose pieces were dropped is split into smaller kept pieces, as the tokenizer
already does for rare words, so nothing becomes unreadable. Position embeddings are cut to the
package's ``max_length``, the longest input the preprocessor ever gives the model.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kiln.compress.checks import check_against_parent
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_package
from kiln.config.schema import VocabConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def trim_vocabulary(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: VocabConfig,
    examples: Examples,
) -> dict[str, Any]:
    """Write a package whose tokenizer and embeddings keep only the tokens the data uses."""
    from kiln.runtime.weights import count_parameters, load_torch_model, save_torch_model

    prep = parent_manifest.get("preprocessing") or {}
    arch = parent_manifest.get("architecture") or {}
    if parent_manifest.get("format") != "torch" or parent_manifest.get("precision") != "fp32":
        raise CompressError(f"{parent}: vocab needs a fp32 torch package (trim before onnx or quantize)")
    if arch.get("family") != "hf" or prep.get("kind") != "text":
        raise CompressError(f"{parent}: vocab applies to transformer text packages, not {arch.get('family')!r}")
    texts = [str(t) for t in examples.train_inputs[: cfg.samples]]
    if not texts:
        raise CompressError("vocab: no training texts to find the tokens in use")
    tokenizer_json = json.loads((parent / prep["tokenizer_file"]).read_text(encoding="utf-8"))
    keep = kept_token_ids(tokenizer_json, texts, cfg)
    model = cast("PreTrainedModel", load_torch_model(parent, parent_manifest))  # family "hf", checked above
    # Position trimming and the pad remap follow BERT's embeddings; RoBERTa-style encoders such
    # as MPNet offset positions by the pad id.
    if model.config.model_type != "bert":
        raise CompressError(f"{parent}: vocab trimming supports BERT-family encoders, not {model.config.model_type!r}")
    old_vocab = model.config.vocab_size
    params_before = count_parameters(model)
    max_length = int(prep["max_length"])
    slice_embeddings(model, keep, max_positions=max_length if cfg.trim_positions else None)
    settings = cfg.model_dump(mode="json")
    with child_package(parent, parent_manifest, dest, transformation="vocab", settings=settings) as child:
        renumbered = renumber_tokenizer(tokenizer_json, keep)
        (child.staging / prep["tokenizer_file"]).write_text(json.dumps(renumbered), encoding="utf-8")
        saved_arch = save_torch_model(model, child.staging, {k: v for k, v in arch.items() if k != "weights"})
        child.manifest.update(format="torch", precision="fp32", architecture=saved_arch)
        child.finalize()
        child.manifest["metrics"] = {
            "vocab_size": {"before": old_vocab, "after": len(keep)},
            "parameters": {"before": params_before, "after": count_parameters(model)},
            "agreement": check_against_parent(parent, child.staging, examples.eval_inputs, examples.eval_labels),
        }
        return child.finalize()


def kept_token_ids(tokenizer_json: dict[str, Any], texts: Sequence[str], cfg: VocabConfig) -> list[int]:
    """Old ids to keep, ascending: specials, characters (optionally) and tokens the texts use."""
    from tokenizers import Tokenizer

    model = tokenizer_json.get("model") or {}
    if model.get("type") != "WordPiece":
        raise CompressError(f"vocab: supports WordPiece tokenizers, not {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    counts: collections.Counter[int] = collections.Counter()
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        counts.update(encoding.ids)
    keep = {i for i, n in counts.items() if n >= cfg.min_frequency}
    keep |= {int(t["id"]) for t in tokenizer_json.get("added_tokens") or []}
    unk = model.get("unk_token")
    if unk in vocab:
        keep.add(vocab[unk])
    if cfg.keep_characters:
        prefix = model.get("continuing_subword_prefix") or "##"
        keep |= {
            i
            for tok, i in vocab.items()
            if len(tok) == 1 or (tok.startswith(prefix) and len(tok) == len(prefix) + 1)
        }
    return sorted(keep)


def renumber_tokenizer(tokenizer_json: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
    """A copy of a WordPiece tokenizer.json with only ``keep``'s tokens, numbered 0..n-1."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(tokenizer_json))
    vocab = out["model"]["vocab"]
    out["model"]["vocab"] = {tok: new_id[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i in new_id}
    for token in out.get("added_tokens") or []:
        token["id"] = new_id[int(token["id"])]
    padding = out.get("padding")
    if padding and "pad_id" in padding:
        padding["pad_id"] = new_id.get(int(padding["pad_id"]), 0)
    post = out.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [new_id[int(i)] for i in special["ids"]]
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(post.get(key), list):
            post[key] = [post[key][0], new_id[int(post[key][1])]]
    return out


def slice_embeddings(model: Any, keep: Sequence[int], *, max_positions: int | None) -> None:
    """Keep the word-embedding rows ``keep`` (in order) and the first ``max_positions`` positions."""
    import torch

    embeddings = model.base_model.embeddings
    index = torch.tensor(list(keep), dtype=torch.long)
    words = embeddings.word_embeddings
    new_words = torch.nn.Embedding(len(keep), words.embedding_dim)
    with torch.no_grad():
        new_words.weight.copy_(words.weight.detach().index_select(0, index))
    embeddings.word_embeddings = new_words
    model.config.vocab_size = len(keep)
    pad = model.config.pad_token_id
    if pad is not None:
        model.config.pad_token_id = list(keep).index(pad) if pad in keep else 0
    positions = embeddings.position_embeddings
    if max_positions is not None and max_positions < positions.num_embeddings:
        new_positions = torch.nn.Embedding(max_positions, positions.embedding_dim)
        with torch.no_grad():
            new_positions.weight.copy_(positions.weight.detach()[:max_positions])
        embeddings.position_embeddings = new_positions
        model.config.max_position_embeddings = max_positions
        for name in ("position_ids", "token_type_ids"):
            buffer = getattr(embeddings, name, None)
            if buffer is not None:
                embeddings.register_buffer(name, buffer[:, :max_positions].clone(), persistent=False)
