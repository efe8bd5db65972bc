"""Tokenizers: the pretrained encoder's own, or a WordPiece tokenizer trained on the train split."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln.data.encoders import ENCODERS, encoder_folder
from kiln.errors import DataError

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
    """Train a lowercasing BERT-style WordPiece tokenizer on ``texts`` and save it to ``dest``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.save(str(dest))
    return dest
