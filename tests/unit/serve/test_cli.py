from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiln.cli.main import app


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "no models to serve"),
        (["--model", "/no/such/folder"], "not a package folder"),
        (["--model", "sentiment@production"], "sentiment@production: "),
        (["--model", "https://example.com/model"], "URLs is not allowed"),
    ],
)
def test_kiln_serve_reports_bad_sources_with_exit_code_2(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2
    assert words in result.output


def test_kiln_serve_refuses_a_public_bind_without_tokens(text_package: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model", str(text_package), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "needs bearer tokens" in result.output
