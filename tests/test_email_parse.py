"""Parsing real forwards, replies and broken messages (tests/fixtures/email/*.eml)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.email.parse import MailError, html_to_text, parse_email, read_command, strip_quoted

FIXTURES = Path(__file__).parent / "fixtures" / "email"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_gmail_forward_splits_note_original_and_attachment() -> None:
    parsed = parse_email(load("gmail_forward.eml"))
    assert parsed.sender == "ana@acme.example"
    assert parsed.note == "Please put the line items of this invoice into the accounting sheet."
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "Northwind Billing <billing@northwind.example>"
    assert parsed.forwarded.subject == "Invoice 2026-118"
    assert parsed.forwarded.date == "Wed, 25 Nov 2026 at 17:40"
    assert parsed.forwarded.body.startswith("Hello Ana,")
    assert "52.50 EUR" in parsed.forwarded.body
    [attachment] = parsed.attachments
    assert attachment.name == "invoice-2026-118.csv"
    assert attachment.data.startswith(b"Item,Qty,Price")
    assert parsed.command is None  # not a reply


def test_outlook_forward_reads_the_original_message_block() -> None:
    parsed = parse_email(load("outlook_forward.eml"))
    assert parsed.note.startswith("Add this order to the orders sheet")
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "Chloé Martin <chloe@martin.example>"  # iso-8859-1, QP
    assert parsed.forwarded.date == "Wednesday, November 25, 2026 4:12 PM"
    assert parsed.forwarded.subject == "Purchase order PO-7731"
    assert "Delivery to Lyon." in parsed.forwarded.body
    assert [(a.name, a.content_type) for a in parsed.attachments] == [
        ("PO-7731.pdf", "application/pdf")]


def test_apple_mail_forward_with_quoted_headers() -> None:
    parsed = parse_email(load("apple_mail_forward.eml"))
    assert parsed.note == "Add these people to the signups sheet."
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "Grace Kim <grace@kim.example>"
    assert parsed.forwarded.subject == "Signups from the fair"
    assert parsed.forwarded.body == ("Hi Eva, here are the people who signed up at our stand. "
                                     "— Grace")
    assert parsed.attachments[0].name == "fair-signups.csv"


def test_forward_as_rfc822_attachment_reduces_html_and_keeps_inner_files() -> None:
    parsed = parse_email(load("rfc822_attachment.eml"))
    assert parsed.note == "Reply to this quote request with our standard prices."
    assert parsed.forwarded is not None
    assert parsed.forwarded.sender == "Dan Weiss <dan@weiss.example>"
    assert parsed.forwarded.body == "Hello,\n\nCould you quote 200 units of the blue widget?"
    assert "track()" not in parsed.forwarded.body  # scripts are dropped
    assert [a.name for a in parsed.attachments] == ["quantities.csv"]
    assert "Forwarded email from Dan Weiss" in parsed.request_text


def test_the_html_of_the_gmail_forward_gives_the_same_reading() -> None:
    raw = load("gmail_forward.eml").decode()
    html_only = raw.replace('Content-Type: text/plain; charset="UTF-8"',
                            'Content-Type: text/x-ignored; charset="UTF-8"')
    parsed = parse_email(html_only.encode())
    assert parsed.note == "Please put the line items of this invoice into the accounting sheet."
    assert parsed.forwarded is not None and parsed.forwarded.subject == "Invoice 2026-118"
    assert parsed.forwarded.body.startswith("Hello Ana,")


def test_reply_command_ignores_quoted_history() -> None:
    parsed = parse_email(load("reply_run_first.eml"))
    assert parsed.note == "Run the first 2, please."
    assert parsed.command is not None
    assert (parsed.command.action, parsed.command.count) == ("run_first", 2)


@pytest.mark.parametrize(("text", "expected"), [
    ("APPROVE", ("approve", None)),
    ("  Approved!  \n\nthanks", ("approve", None)),
    ("yes, approve", ("approve", None)),
    ("*run first 10*", ("run_first", 10)),
    ("Run only the first 3 please", ("run_first", 3)),
    ("cancel", ("cancel", None)),
    ("Cancel this.", ("cancel", None)),
    ("hmm, what would it cost for March?", None),
    ("", None),
])
def test_read_command_tolerates_case_and_punctuation(
        text: str, expected: tuple[str, int | None] | None) -> None:
    command = read_command(text)
    assert (None if command is None else (command.action, command.count)) == expected


def test_strip_quoted_cuts_at_the_attribution_line() -> None:
    reply = "approve\n\nOn Tue, Ana wrote:\n> cancel\n> run first 3\n"
    assert strip_quoted(reply) == "approve"
    assert read_command(strip_quoted("> cancel\napprove")) is not None


def test_unusable_messages_raise_what_the_sender_is_told() -> None:
    with pytest.raises(MailError, match="structure of your message"):
        parse_email(load("malformed_no_boundary.eml"))
    with pytest.raises(MailError, match="arrived empty"):
        parse_email(load("empty_body.eml"))
    with pytest.raises(MailError, match=r"accept up to 1.0 MB"):
        parse_email(b"From: a@b.example\r\n\r\n" + b"x" * 2_000_000, max_bytes=1_048_576)
    with pytest.raises(MailError, match="no sender address"):
        parse_email(b"Subject: hi\r\n\r\nhello\r\n")


def test_unknown_charset_is_read_as_utf8_with_a_warning() -> None:
    parsed = parse_email(load("unknown_charset.eml"))
    assert parsed.note == "Count the rows of the signups sheet."
    assert "x-unknown-42" in parsed.warnings[0]


def test_html_to_text_keeps_blocks_as_lines() -> None:
    assert html_to_text("<p>One &amp; two</p><div>three<br>four</div><style>x{}</style>") == \
        "One & two\n\nthree\nfour"


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).parents[1])


def test_cli_email_parse_prints_json_and_errors() -> None:
    done = _sluice("email", "parse", str(FIXTURES / "reply_run_first.eml"), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["command"] == {"action": "run_first", "count": 2}
    assert data["note"] == "Run the first 2, please."

    text = _sluice("email", "parse", str(FIXTURES / "outlook_forward.eml"))
    assert text.returncode == 0 and "Purchase order PO-7731" in text.stdout
    assert "PO-7731.pdf (application/pdf" in text.stdout

    broken = _sluice("email", "parse", str(FIXTURES / "empty_body.eml"), "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["error"]["code"] == "mail_unusable"
