"""`sluice plan` (prompt, answer from a file) and `sluice eval` on the shipped suite (issue 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from infra.cli import app
from infra.evaluation import run_suite

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ANSWER = """\
Ask the signups without a budget for one.

```python
sheet = sheets.open("signups")
missing = [row for row in sheet.rows() if not row["Budget"]]

def ask(row):
    mail.send(to=row["Email"], subject="Your budget", body=f"Hi {row['Name']}, your budget?")
    sheet.update(row, {"Asked": today().isoformat()})

each(missing, ask, concurrency=4)
print(len(missing), "asked")
```
"""


def env(tmp_path: Path) -> dict[str, str]:
    sheets = tmp_path / "sheets"
    shutil.copytree(EXAMPLES / "signups" / "sheets", sheets)
    return {"SLUICE_HOME": str(tmp_path / ".sluice"), "SLUICE_SHEETS_DIR": str(sheets),
            "SLUICE_SMTP_PORT": "9", "SLUICE_SCRIPTED_MODEL_URL": ""}


def test_print_prompt_shows_the_exact_messages(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "Ask for budgets", "--print-prompt", "--json"],
                                env=env(tmp_path))
    assert result.exit_code == 0, result.output
    messages = json.loads(result.stdout)
    assert [m["role"] for m in messages] == ["system", "user", "user"]
    assert "def each(items: Iterable[T]" in messages[0]["content"]
    assert '"signups"' in messages[1]["content"]  # the workspace: the sheet and its columns
    assert messages[2]["content"].startswith("Ask for budgets")


def test_an_answer_from_a_file_is_checked_sampled_and_estimated(tmp_path: Path) -> None:
    (tmp_path / "answer.md").write_text(ANSWER)
    before = (EXAMPLES / "signups" / "sheets" / "signups.csv").read_bytes()
    result = CliRunner().invoke(app, ["plan", "Ask for budgets", "--answer",
                                      str(tmp_path / "answer.md"), "--json"], env=env(tmp_path))
    assert result.exit_code == 0, result.output
    outcome: dict[str, Any] = json.loads(result.stdout)
    assert outcome["ok"] and outcome["model_calls"] == 0
    sample = outcome["sample"]
    assert sample["items"] == 3 and sample["available"] == 4
    assert [w["action"] for w in sample["writes"]].count("mail.send") == 3
    assert outcome["plan"]["estimate"]["writes"] == {"mail.send": 4, "Sheet.update": 4}
    assert (tmp_path / "sheets" / "signups.csv").read_bytes() == before  # nothing written


def test_an_answer_that_breaks_a_rule_prints_what_the_model_would_get(tmp_path: Path) -> None:
    (tmp_path / "answer.md").write_text(ANSWER.replace('subject="Your budget"', "subject=5"))
    result = CliRunner().invoke(app, ["plan", "Ask for budgets", "--answer",
                                      str(tmp_path / "answer.md")], env=env(tmp_path))
    assert result.exit_code == 1
    assert "Your program was not accepted" in result.stdout
    assert 'type-check [arg-type]: Argument "subject" to "send"' in result.stdout


async def test_the_shipped_eval_suite_passes_with_scripted_answers() -> None:
    report = await run_suite(EXAMPLES / "eval", environ={})
    assert [(t.name, t.passed, t.problems) for t in report.tasks] == [
        ("budgets", True, []), ("classify", True, []), ("extract", True, [])]
    calls = {t.name: t.model_calls for t in report.tasks}
    # The plan and its sample review; then one ai.* call per row in the sample and in the run.
    assert calls == {"budgets": 2, "classify": 2 + 3 + 4, "extract": 2 + 3 + 3}
    assert {k.kind for k in report.kinds} == {"plan", "classify", "extract"}
    assert set(report.best_per_dollar()) == {"plan", "classify", "extract"}


async def test_eval_reports_a_task_whose_end_state_is_wrong(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLES / "eval" / "classify", suite / "classify")
    task = suite / "classify" / "task.yaml"
    task.write_text(task.read_text().replace("equals: {Temperature: hot}",
                                             "equals: {Temperature: warm}"))
    report = await run_suite(suite, environ={})
    [result] = report.tasks
    assert not result.passed
    assert result.problems == [
        "leads where {'Email': 'iris@berg.example'}: Temperature is 'hot', not 'warm'"]
