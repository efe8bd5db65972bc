from pathlib import Path

import pandas as pd
import pytest

from kiln.data.sources import load_builtin, load_text_file, read_lines
from kiln.errors import DataError


def test_load_builtin_rotten_tomatoes_drops_plot_rows() -> None:
    raw = load_builtin("rotten_tomatoes")
    assert set(raw.labels) == {"fresh", "rotten"}
    assert len(raw.labels) > 12_000
    assert all(isinstance(t, str) and t for t in raw.inputs[:100])


@pytest.mark.parametrize(
    ("name", "shape", "max_value"), [("mnist5k", (5000, 1, 28, 28), 255.0), ("digits", (1797, 1, 8, 8), 16.0)]
)
def test_load_builtin_images_have_shape_and_range(name: str, shape: tuple, max_value: float) -> None:
    raw = load_builtin(name)
    assert raw.inputs.shape == shape
    assert raw.inputs.max() == max_value
    assert sorted(set(raw.labels)) == [str(i) for i in range(10)]


def test_load_builtin_unknown_name_lists_available() -> None:
    with pytest.raises(DataError, match="unknown built-in dataset 'nope'; available: digits, mnist5k, rotten_tomatoes"):
        load_builtin("nope")


def _write(path: Path, frame: pd.DataFrame, fmt: str) -> Path:
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_load_text_file_maps_columns_in_every_format(tmp_path: Path, fmt: str) -> None:
    frame = pd.DataFrame({"sentence": ["good, really", "bad"], "y": ["pos", "neg"]})
    path = _write(tmp_path / f"d.{fmt}", frame, fmt)
    raw = load_text_file(path, fmt=None, encoding="utf-8", has_header=True, text_column="sentence", label_column="y")
    assert raw.inputs == ["good, really", "bad"]
    assert raw.labels == ["pos", "neg"]


def test_load_text_file_missing_column_names_it_and_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,category\nhello,a\n")
    with pytest.raises(DataError) as info:
        load_text_file(path, fmt=None, encoding="utf-8", has_header=True, text_column="text", label_column="label")
    assert f"{path}: label column 'label' not found; columns are text, category" in str(info.value)


def test_load_text_file_undecodable_bytes_names_offset_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 cr\xe8me,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"bytes at offset \d+ cannot be decoded as utf-8"):
        load_text_file(path, fmt=None, encoding="utf-8", has_header=True, text_column="text", label_column="label")
    raw = load_text_file(path, fmt=None, encoding="latin-1", has_header=True, text_column="text", label_column="label")
    assert raw.inputs == ["café crème"]


def test_load_text_file_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_text_file(
            tmp_path / "no.csv", fmt=None, encoding="utf-8", has_header=True, text_column="t", label_column="l"
        )


def test_load_text_file_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        load_text_file(path, fmt=None, encoding="utf-8", has_header=True, text_column="t", label_column="l")


def test_load_text_file_unknown_suffix_asks_for_format(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="set data.format"):
        load_text_file(path, fmt=None, encoding="utf-8", has_header=True, text_column="a", label_column="b")


def test_load_text_file_reads_shared_financial_phrasebank_as_latin1() -> None:
    path = Path(__file__).resolve().parents[4] / "shared" / "data" / "financial_phrasebank" / "all-data.csv"
    raw = load_text_file(
        path, fmt=None, encoding="latin-1", has_header=True, text_column="content", label_column="result"
    )
    assert set(raw.labels) == {"negative", "neutral", "positive"}
    assert len(raw.labels) == 4846


def test_load_text_file_txt_format_has_no_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match=f"{path}: a txt file has no columns; use csv, tsv, jsonl or parquet"):
        load_text_file(path, fmt="txt", encoding="utf-8", has_header=True, text_column="a", label_column="b")


def test_read_lines_splits_on_newlines_only(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_bytes("\ufeffone\r\ntwo \x0c page\u2028still two\nthree".encode())
    assert read_lines(path, encoding="utf-8") == ["one", "two \x0c page\u2028still two", "three"]
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"bytes at offset 3 cannot be decoded as utf-8"):
        read_lines(path, encoding="utf-8")
