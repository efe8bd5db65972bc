"""The trained WordPiece tokenizer: the same file from the same text in any process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

from kiln.data.sources import load_builtin
from kiln.data.tokenizer import SPECIAL_TOKENS, train_wordpiece

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
