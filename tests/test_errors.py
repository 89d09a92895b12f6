"""Only lorafit's own errors (what a user can fix) become one-line exit-2 messages; anything else
is a bug and keeps its traceback (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import lorafit.budget
from lorafit.cli import app
from lorafit.errors import DataError

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_an_internal_value_error_is_a_bug_not_a_user_error(monkeypatch):
    def broken(cfg):
        raise ValueError("shapes (3,) and (4,) not aligned")  # e.g. a numpy bug deep inside a stage

    monkeypatch.setattr(lorafit.budget, "count_budget", broken)
    result = CliRunner().invoke(app, ["budget", str(QUICK)])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError) and "not aligned" in str(result.exception)  # traceback kept
    assert "error: " not in result.stderr


@pytest.mark.parametrize("error,code", [(DataError("data file 'x.csv', row 3: empty label"), 2),
                                        (FileNotFoundError(2, "No such file or directory", "x.csv"), 2)])
def test_user_errors_are_one_line(monkeypatch, error, code):
    def failing(cfg):
        raise error

    monkeypatch.setattr(lorafit.budget, "count_budget", failing)
    result = CliRunner().invoke(app, ["budget", str(QUICK)])
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "x.csv" in err, err
