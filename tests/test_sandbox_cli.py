"""`sandbox exec` (infra/cli_sandbox.py), driving the real sandbox and the local catalog.

Each test runs in its own folder with its own Sluice home and no model configured, so neither
the project's `.env` nor the developer's environment reaches the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from infra.cli_sandbox import NO_MODEL, sandbox_app

SIGNUPS = "Name,Email,Budget\nAna,ana@example.com,\nBo,bo@example.com,5000\n"
GOOD = (
    "sheet = sheets.open('signups')\n"
    "rows = sheet.rows()\n"
    "print('rows:', len(rows), '[kept as written]')\n"
    "for row in rows:\n"
    "    sheet.update(row, {'Checked': 'yes'})\n"
    "result = [{'name': r['Name'], 'budget': r['Budget']} for r in rows]\n"
)
FIELDS = {"ok", "isolation", "output", "error", "failures", "table_csv", "calls", "seconds",
          "killed_reason", "violations"}
ISOLATIONS = {"bwrap", "unshare", "rlimits"}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("SLUICE_MODEL_API_KEY", "SLUICE_SCRIPTED_MODEL_URL", "SLUICE_SHEETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SLUICE_SANDBOX_WALL_S", "20")
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    (sheets / "signups.csv").write_text(SIGNUPS)
    return tmp_path


def program(folder: Path, source: str, name: str = "program.py") -> Path:
    path = folder / name
    path.write_text(source)
    return path


def sandbox(*args: str) -> Result:
    return CliRunner().invoke(sandbox_app, ["exec", *args])


def test_a_good_program_prints_its_output_and_table(folder: Path) -> None:
    result = sandbox(str(program(folder, GOOD)), "--sheets", str(folder / "sheets"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("rows: 2 [kept as written]\n")
    assert "result: 2 rows" in result.stdout and "5000" in result.stdout
    assert "ok · isolation " in result.stdout and "4 integration calls" in result.stdout
    assert (folder / "sheets" / "signups.csv").read_text().splitlines()[1].endswith(",yes")


def test_preview_records_writes_instead_of_performing_them(folder: Path) -> None:
    result = sandbox(str(program(folder, GOOD)), "--sheets", str(folder / "sheets"),
                     "--preview")
    assert result.exit_code == 0, result.output
    assert "Previewed 2 writes (not performed):" in result.stdout
    assert "would Sheet('signups').update(row=Row('row-1'), values={'Checked': 'yes'})" in (
        result.stdout)
    assert (folder / "sheets" / "signups.csv").read_text() == SIGNUPS


def test_json_output_is_one_object_with_every_field(folder: Path) -> None:
    result = sandbox(str(program(folder, GOOD)), "--sheets", str(folder / "sheets"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == FIELDS
    assert report["ok"] is True and report["isolation"] in ISOLATIONS
    assert report["output"] == "rows: 2 [kept as written]\n"
    assert report["table_csv"] == "name,budget\nAna,\nBo,5000\n"
    assert report["calls"] == 4 and report["seconds"] > 0
    assert report["error"] is None and report["violations"] == [] and report["failures"] == []


def test_a_policy_violation_exits_1_with_the_caret(folder: Path) -> None:
    path = program(folder, "x = 1\ny = x.__class__\n")
    result = sandbox(str(path))
    assert result.exit_code == 1
    assert "refuses this program; nothing ran" in result.stderr
    lines = result.stderr.splitlines()
    code = lines.index("line 2: y = x.__class__")
    assert lines[code + 1].index("^") == lines[code].index("__class__")
    assert lines[code + 2].startswith("dunder: '.__class__' is not allowed")

    report = json.loads(sandbox(str(path), "--json").stdout)
    assert set(report) == FIELDS
    assert report["ok"] is False and report["isolation"] is None
    (violation,) = report["violations"]
    assert (violation["line"], violation["col"], violation["rule"]) == (2, 6, "dunder")
    assert violation["text"].startswith("line 2: y = x.__class__\n")
    assert report["error"]["type"] == "PolicyViolation"


def test_a_runtime_error_exits_1_with_the_line(folder: Path) -> None:
    source = "def share(total, people):\n    return total / people\n\nshare(10, 0)\n"
    result = sandbox(str(program(folder, source)))
    assert result.exit_code == 1
    assert "The program failed at line 2: ZeroDivisionError: division by zero" in result.stderr
    assert "line 4, in <module>: share(10, 0)" in result.stderr
    assert "failed · isolation " in result.stdout


def test_failed_items_are_listed_with_the_error(folder: Path) -> None:
    source = ("shares = each([1, 0, 2], lambda n: 10 / n)\n"
              "print(shares)\n"
              "print(total)\n")
    result = sandbox(str(program(folder, source)))
    assert result.exit_code == 1
    assert result.stdout.startswith("[10.0, None, 5.0]\n")
    assert "1 items failed:\n  each#1 item 1 (line 1): ZeroDivisionError" in result.stderr
    assert "The program failed at line 3: NameError: name 'total' is not defined" in (
        result.stderr)


def test_the_wall_clock_limit_can_be_set(folder: Path) -> None:
    result = sandbox(str(program(folder, "while True:\n    pass\n")), "--wall-s", "1.5",
                     "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["killed_reason"] == "wall clock limit"
    assert "1.5 s wall-clock limit" in report["error"]["message"]
    assert 1.5 <= report["seconds"] < 5


def test_without_a_model_ai_says_how_to_configure_one(folder: Path) -> None:
    result = sandbox(str(program(folder, "print(ai.generate('Say hi to Ana'))\n")))
    assert result.exit_code == 1
    assert f"IntegrationError: {NO_MODEL}" in result.stderr


def test_a_missing_file_is_a_usage_error(folder: Path) -> None:
    result = sandbox("nowhere.py")  # relative: the message must fit in its box unwrapped
    assert result.exit_code == 2
    assert "file 'nowhere.py' does not exist" in result.stderr


def test_it_runs_as_a_real_command(folder: Path) -> None:
    path = program(folder, "print(len(sheets.list()), sheets.list())\n")
    command = [sys.executable, "-c", "from infra.cli_sandbox import sandbox_app; sandbox_app()",
               "exec", str(path), "--sheets", str(folder / "sheets"), "--json"]
    done = subprocess.run(command, cwd=folder, env=dict(os.environ), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == FIELDS
    assert report["ok"] is True and report["isolation"] in ISOLATIONS
    assert report["output"] == "1 ['signups']\n"
