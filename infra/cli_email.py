"""`sluice email parse FILE.eml [--json]`: what Sluice understands of a message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bot.email.parse import MailError, ParsedEmail, parse_email

email_app = typer.Typer(help="Debug how Sluice reads emails.", no_args_is_help=True)
out = Console()


@email_app.command()
def parse(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the note, the forwarded original, attachments and the reply's command, or the
    error Sluice would reply with (exit code 1)."""
    try:
        parsed = parse_email(path.read_bytes())
    except MailError as exc:
        if as_json:
            print(json.dumps({"error": exc.to_dict()}, indent=2))
        else:
            Console(stderr=True).print(f"[red]Sluice would reply:[/red] {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(parsed.model_dump(mode="json"), indent=2, ensure_ascii=False))
        return
    _print(parsed)


def _print(parsed: ParsedEmail) -> None:
    rows = [("from", f"{parsed.sender_name} <{parsed.sender}>".strip()),
            ("subject", parsed.subject), ("note", parsed.note or "(none)")]
    if parsed.forwarded is not None:
        fwd = parsed.forwarded
        rows += [("forwarded from", fwd.sender), ("forwarded date", fwd.date),
                 ("forwarded subject", fwd.subject), ("forwarded body", fwd.body)]
    rows += [(f"attachment {i + 1}", f"{a.name} ({a.content_type}, {a.size} bytes)")
             for i, a in enumerate(parsed.attachments)]
    if parsed.in_reply_to:
        command = parsed.command
        rows.append(("command", "none (unclear)" if command is None else
                     command.action + (f" {command.count}" if command.count else "")))
    rows += [("warning", w) for w in parsed.warnings]
    for name, value in rows:
        out.print(f"[bold]{name:>17}[/bold]: {escape(value)}", highlight=False)
