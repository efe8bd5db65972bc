"""Tokenizers: the pretrained encoder's own, a WordPiece tokenizer trained on the train split, or a
byte-level BPE for GPTs, and the packing of tokenized documents into training sequences."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.data.encoders import ENCODERS, encoder_folder
from kiln.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOS_TOKEN = "<|endoftext|>"
# The special tokens of a byte-level BPE trained for a GPT: end of text first, then the chat roles
# that kiln.data.chat.DEFAULT_CHAT_TEMPLATE writes.
GPT_SPECIAL_TOKENS = (EOS_TOKEN, "<|system|>", "<|user|>", "<|assistant|>")


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


def train_byte_bpe(texts: list[str], vocab_size: int, dest: Path, *, special_tokens: list[str]) -> Path:
    """Train a GPT-2-style byte-level BPE on ``texts`` and save it to ``dest``.

    Every byte is in the vocabulary, so any text encodes without an unknown token. The special
    tokens get the first ids, ``<|endoftext|>`` (id 0) before the others given. The same texts
    and size give a byte-identical file in any process.

    Raises:
        ConfigError: ``vocab_size`` has no room beyond the 256 bytes and the special tokens.
        DataError: ``texts`` hold no characters.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    specials = [EOS_TOKEN, *dict.fromkeys(token for token in special_tokens if token != EOS_TOKEN)]
    # The ByteLevel alphabet given in full and sorted fixes the ids of the 256 byte symbols, and
    # with them the ranking of merges of equal count (unlike WordPiece's ##-symbols below).
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    least = len(alphabet) + len(specials) + 1
    if vocab_size < least:
        raise ConfigError(
            f"model.vocab_size must be >= {least} for a byte-level BPE "
            f"({len(alphabet)} bytes + {len(specials)} special tokens + 1 merge), got {vocab_size}"
        )
    if not any(text.strip() for text in texts):
        raise DataError("no text to train the byte-level BPE tokenizer on")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(dest))
    return dest


def pack_documents(token_ids: Sequence[Sequence[int]], sequence_length: int, eos_id: int) -> np.ndarray:
    """Join tokenized documents, each followed by ``eos_id``, and cut the stream into rows.

    Returns:
        int64 array ``[n, sequence_length]``; the tail shorter than a row is dropped.

    Raises:
        DataError: the documents hold fewer tokens than one row.
    """
    if sequence_length < 1:
        raise ConfigError(f"sequence_length must be >= 1, got {sequence_length}")
    eos = np.array([eos_id], dtype=np.int64)
    pieces = [part for ids in token_ids for part in (np.asarray(ids, dtype=np.int64).reshape(-1), eos)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    rows = len(stream) // sequence_length
    if rows == 0:
        raise DataError(
            f"the documents hold {len(stream)} tokens (end-of-text included), fewer than one sequence "
            f"of {sequence_length}; use more text or a smaller lm.sequence_length"
        )
    return stream[: rows * sequence_length].reshape(rows, sequence_length)


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
