"""FAQ question/answer pairs: a user's CSV, or the English pairs of the chatterbot-corpus package."""

from __future__ import annotations

from pathlib import Path

from kiln.errors import DataError


def load_faq(path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(questions, answers): from a CSV with ``question`` and ``answer`` columns, else the bundled pairs.

    Duplicate questions keep their first answer.

    Raises:
        DataError: a missing file or column, or no pairs at all.
    """
    if path is None:
        pairs = _chatterbot_pairs()
        origin = "chatterbot-corpus English"
    else:
        from kiln.data.sources import read_table

        frame = read_table(path, fmt=None, encoding="utf-8", has_header=True)
        for column in ("question", "answer"):
            if column not in frame.columns:
                raise DataError(f"{path}: FAQ column {column!r} not found; columns are {', '.join(frame.columns)}")
        pairs = list(zip(frame["question"].astype(str), frame["answer"].astype(str), strict=True))
        origin = str(path)
    questions, answers, seen = [], [], set()
    for question, answer in pairs:
        key = question.strip().lower()
        if key and answer.strip() and key not in seen:
            seen.add(key)
            questions.append(question.strip())
            answers.append(answer.strip())
    if not questions:
        raise DataError(f"{origin}: no question/answer pairs")
    return questions, answers


def _chatterbot_pairs() -> list[tuple[str, str]]:
    import yaml

    from kiln.data.sources import package_folder

    folder = package_folder("chatterbot_corpus") / "data" / "english"
    pairs = []
    for path in sorted(folder.glob("*.yml")):
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in content.get("conversations") or []:
            # A conversation is a list of turns: the first is the question, the second its answer.
            if isinstance(conversation, list) and len(conversation) >= 2:
                pairs.append((str(conversation[0]), str(conversation[1])))
    return pairs
