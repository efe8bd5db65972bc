"""The trained WordPiece tokenizer: the same file from the same text in any process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from kiln.data.sources import load_builtin
from kiln.data.tokenizer import SPECIAL_TOKENS, pack_documents, train_byte_bpe, train_wordpiece
from kiln.errors import ConfigError, DataError

# Trains on all Rotten Tomatoes texts, as a recipe with vocab_size 2000 would.
_TRAIN = """
import sys
from pathlib import Path
from kiln.data.sources import load_builtin
from kiln.data.tokenizer import train_wordpiece
train_wordpiece([str(t) for t in load_builtin("rotten_tomatoes").inputs], 2000, Path(sys.argv[1]))
"""


def test_train_wordpiece_gives_the_same_file_in_separate_processes(tmp_path: Path) -> None:
    files = []
    for hash_seed in ("1", "2"):
        dest = tmp_path / f"tokenizer-{hash_seed}.json"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", _TRAIN, str(dest)], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        files.append(dest.read_bytes())
    assert len(Tokenizer.from_str(files[0].decode()).get_vocab()) == 2000
    assert files[0] == files[1]


def test_train_wordpiece_keeps_only_the_special_tokens_special(tmp_path: Path) -> None:
    texts = [str(t) for t in load_builtin("rotten_tomatoes").inputs[:500]]
    tokenizer = Tokenizer.from_file(str(train_wordpiece(texts, 400, tmp_path / "tokenizer.json")))
    special = {token.content: id_ for id_, token in tokenizer.get_added_tokens_decoder().items()}
    assert special == {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    encoding = tokenizer.encode("##a story")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert "##a" not in encoding.tokens  # a vocabulary entry, not a token matched in raw text
    assert tokenizer.decode(tokenizer.encode("a moving story").ids) == "a moving story"


# Trains a byte-level BPE on 2,000 Wikipedia lead sections, as a GPT recipe would.
_TRAIN_BPE = """
import sys
from pathlib import Path
from kiln.config.schema import Recipe
from kiln.data.corpus import load_language_data
from kiln.data.tokenizer import GPT_SPECIAL_TOKENS, train_byte_bpe
recipe = Recipe.model_validate(
    {"name": "lm", "task": "text-generation", "model": {"kind": "gpt"},
     "data": {"dataset": "wiki_summaries", "max_examples": 2000}}
)
texts = load_language_data(recipe).train
train_byte_bpe(texts, 3000, Path(sys.argv[1]), special_tokens=list(GPT_SPECIAL_TOKENS))
"""


def test_train_byte_bpe_gives_the_same_file_in_separate_processes(tmp_path: Path) -> None:
    files = []
    for hash_seed in ("1", "2"):
        dest = tmp_path / f"bpe-{hash_seed}.json"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run(
            [sys.executable, "-c", _TRAIN_BPE, str(dest)], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr
        files.append(dest.read_bytes())
    assert Tokenizer.from_str(files[0].decode()).get_vocab_size() == 3000
    assert files[0] == files[1]


def test_train_byte_bpe_puts_endoftext_first_and_round_trips_any_text(tmp_path: Path) -> None:
    texts = ["the cat sat on the mat", "the dog sat on the log"] * 10
    dest = train_byte_bpe(texts, 300, tmp_path / "tokenizer.json", special_tokens=["<|user|>", "<|endoftext|>"])
    tokenizer = Tokenizer.from_file(str(dest))
    special = {token.content: id_ for id_, token in tokenizer.get_added_tokens_decoder().items()}
    assert special == {"<|endoftext|>": 0, "<|user|>": 1}
    text = "Zoë's café — 東京 🚀\n\ttabs"  # never seen: every byte is in the vocabulary
    encoding = tokenizer.encode(text)
    assert tokenizer.token_to_id("<unk>") is None and tokenizer.decode(encoding.ids) == text
    assert tokenizer.encode("<|user|>\nthe cat<|endoftext|>").ids[0] == 1
    assert tokenizer.encode("<|user|>\nthe cat<|endoftext|>").ids[-1] == 0
    assert tokenizer.encode("the cat").tokens[0] == "the"  # no prefix space added


def test_train_byte_bpe_refuses_vocab_without_room_for_merges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.vocab_size must be >= 259 for a byte-level BPE .*got 200"):
        train_byte_bpe(["text"], 200, tmp_path / "t.json", special_tokens=["<|user|>"])
    assert not (tmp_path / "t.json").exists()


def test_pack_documents_joins_with_eos_and_drops_the_tail() -> None:
    packed = pack_documents([[1, 2, 3], [4], np.array([5, 6])], sequence_length=3, eos_id=0)
    assert packed.dtype == np.int64
    assert packed.tolist() == [[1, 2, 3], [0, 4, 0], [5, 6, 0]]  # every document is followed by EOS
    # 1 2 3 9 4 9 5 6 9: the last token does not fill a row and is dropped.
    assert pack_documents([[1, 2, 3], [4], [5, 6]], sequence_length=4, eos_id=9).tolist() == [
        [1, 2, 3, 9],
        [4, 9, 5, 6],
    ]


def test_pack_documents_refuses_less_than_one_sequence() -> None:
    with pytest.raises(DataError, match="hold 3 tokens .* fewer than one sequence of 8"):
        pack_documents([[1, 2]], sequence_length=8, eos_id=0)
