"""Tokenizers: the pretrained encoder's own, or a WordPiece tokenizer trained on the train split."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.data.encoders import ENCODERS, encoder_folder
from kiln.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def resolve_pretrained(name: str) -> Path:
    """The local folder of a pretrained encoder: an installed one by name, or a path."""
    if name in ENCODERS:
        return encoder_folder(name)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise DataError(
            f"pretrained model {name!r} is neither an installed encoder "
            f"({', '.join(ENCODERS)}) nor a folder with config.json"
        )
    return folder


def copy_pretrained_tokenizer(name: str, dest: Path) -> Path:
    """Copy a pretrained encoder's ``tokenizer.json`` to ``dest``."""
    source = resolve_pretrained(name) / "tokenizer.json"
    if not source.is_file():
        raise DataError(f"pretrained model {name!r} has no tokenizer.json")
    shutil.copyfile(source, dest)
    return dest


def train_wordpiece(texts: list[str], vocab_size: int, dest: Path) -> Path:
    """Train a lowercasing BERT-style WordPiece tokenizer on ``texts`` and save it to ``dest``.

    The same texts and size give a byte-identical file in any process.
    """
    from tokenizers import Tokenizer, models, processors
    from tokenizers.trainers import WordPieceTrainer

    trained = _pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *_base_tokens(trained, texts)],
        min_frequency=2,
        show_progress=False,
    )
    trained.train_from_iterator(texts, trainer=trainer)
    # The characters given to the trainer first keep their ids but are not special tokens.
    tokenizer = _pipeline(Tokenizer(trained.model))
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.save(str(dest))
    return dest


def _pipeline(tokenizer: Tokenizer) -> Tokenizer:
    from tokenizers import decoders, normalizers, pre_tokenizers

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _base_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[str]:
    """Every character of the words in ``texts``, then every ``##`` character, each sorted.

    HF's trainer numbers the ``##`` characters in the order it meets them while iterating a hash
    map of the words, which differs between processes; merges of equal count are then ranked by
    those ids, so the ids, and at the size limit even the tokens, came out different each run
    (huggingface/tokenizers#1794). Given first, in this fixed order, every id is fixed.
    """
    assert tokenizer.normalizer is not None and tokenizer.pre_tokenizer is not None  # set by _pipeline
    # Words never span a space, so each distinct space-separated chunk is split once.
    chunks = {chunk for text in texts for chunk in text.split(" ")}
    characters: set[str] = set()
    continuations: set[str] = set()
    for chunk in chunks:
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(chunk)):
            characters.update(word)
            continuations.update(word[1:])
    return sorted(characters) + ["##" + c for c in sorted(continuations)]
