"""Email end to end: real SMTP (smtplib) into our aiosmtpd server, replies in the outbox."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import time
from collections.abc import AsyncIterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select

from bot.deps import BotDeps
from bot.email.inbound import InboundServer, start_inbound
from bot.email.mirror import link_signature
from core.automations import Automations
from core.db import MailRow, OutboxRow
from core.events import publish
from core.types import EventKind, JobEvent, Progress
from infra.redis import EmbeddedRedis
from tests._stack import DEMO_REQUEST, Stack

FIXTURES = Path(__file__).parent / "fixtures" / "email"
ANA = "ana@acme.example"
ENV = {"SLUICE_EMAIL_ALLOW": f"{ANA}, @friends.example", "SLUICE_SIGNING_KEY": "test-key",
       "SLUICE_PUBLIC_URL": "http://sluice.test"}


class Mail:
    """The running stack with our inbound SMTP server on a free loopback port."""

    def __init__(self, stack: Stack, server: InboundServer) -> None:
        self.stack = stack
        self.server = server

    async def send(self, raw: bytes, *, sender: str = ANA,
                   to: str = "sluice@localhost") -> None:
        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as smtp:
                smtp.sendmail(sender, [to], raw)

        await asyncio.to_thread(deliver)

    async def sent_to(self, address: str) -> list[EmailMessage]:
        """What the outbox received for `address`, parsed, in order."""
        async with self.stack.store.session() as s:
            rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.seq))).all()
        found = []
        for row in rows:
            if address in row.recipients:
                msg = message_from_bytes(row.raw, policy=policy.default)
                assert isinstance(msg, EmailMessage)
                found.append(msg)
        return found


@pytest.fixture
async def mail(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Mail]:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=ENV) as stack:
        deps = BotDeps(settings=stack.settings, store=stack.store, redis=stack.redis)
        server = await start_inbound(deps, host="127.0.0.1", port=0)
        try:
            yield Mail(stack, server)
        finally:
            await server.stop()


def compose(text: str, *, subject: str = "Signups", sender: str = ANA,
            to: str = "sluice@localhost", message_id: str = "<first.1@acme.example>",
            in_reply_to: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ana Lima <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = f"<first.1@acme.example> {in_reply_to}"
    msg.set_content(text)
    return msg.as_bytes(policy=policy.SMTP)  # CRLF line ends, as mail clients send


def body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_approval_by_email_reply_end_to_end(mail: Mail) -> None:
    await mail.send(compose(DEMO_REQUEST))
    [ack] = await mail.sent_to(ANA)
    assert ack["Subject"] == "Re: Signups"
    assert ack["In-Reply-To"] == "<first.1@acme.example>"
    thread_tag = ack["From"].addresses[0].addr_spec
    assert thread_tag.startswith("sluice+thr_") and thread_tag.endswith("@localhost")
    thread_id = thread_tag.split("+", 1)[1].split("@")[0]
    assert "writing a program" in body(ack)

    await mail.stack.drain()
    ack, plan = await mail.sent_to(ANA)
    assert plan["Subject"] == "Re: Signups"
    assert plan["In-Reply-To"] == ack["Message-ID"]
    assert plan["References"].split() == ["<first.1@acme.example>", ack["Message-ID"]]
    assert plan["Message-ID"] not in (ack["Message-ID"],)
    text = body(plan)
    assert "Plan:" in text and "It will update 4 rows, send 4 emails." in text
    assert 'Reply “approve”, “run first 3” or “cancel”.' in text
    assert "http://sluice.test/email/decide?message=" in text  # the signed links
    assert [m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]] == []

    reply = compose("APPROVE\n\nOn Thu, Sluice wrote:\n> Reply cancel\n> cancel\n",
                    subject="Re: Signups", to=thread_tag, message_id="<reply.2@acme.example>",
                    in_reply_to=plan["Message-ID"])
    await mail.send(reply)
    await mail.stack.drain()

    [plan_msg] = await mail.stack.messages(thread_id, "plan")
    assert f"Approved by {ANA}" in plan_msg["text"]
    [result] = await mail.stack.messages(thread_id, "result")
    assert "sent 4 emails" in result["text"]
    mails = await mail.sent_to(ANA)
    kinds = [body(m).split(":")[0].split(".")[0] for m in mails]
    assert kinds[:3] == ["Got it", "Plan", "Queued"]
    last = mails[-1]
    assert "sent 4 emails" in body(last) and last["Subject"] == "Re: Signups"
    assert last["In-Reply-To"] == mails[-2]["Message-ID"]
    [csv_part] = list(last.iter_attachments())
    assert csv_part.get_filename().endswith(".csv")
    assert "ben@okafor.example" in csv_part.get_content()
    assert len({m["Message-ID"] for m in mails}) == len(mails)  # every reply its own id
    signups = [m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]]
    assert len(signups) == 4

    # Progress past half way (a long run) gets one short email, however often it is reported.
    run_id = result["meta"]["run_id"]
    for done in (2, 3):
        await publish(mail.stack.redis, JobEvent(
            kind=EventKind.PROGRESS, thread_id=thread_id, run_id=run_id,
            progress=Progress(done=done, total=4, cost_usd=0.5)))
    await mail.stack.settled()
    [halfway] = [m for m in await mail.sent_to(ANA) if body(m).startswith("Halfway")]
    assert "Halfway: 2 of 4 done, 0 failed, $0.5000 so far" in body(halfway)

    # The same reply delivered again (an SMTP retry) decides nothing twice.
    await mail.send(reply)
    await mail.stack.drain()
    assert len(await mail.stack.messages(thread_id, "result")) == 1


async def test_reply_run_first_n_and_unclear_reply(mail: Mail) -> None:
    await mail.send(compose(DEMO_REQUEST))
    await mail.stack.drain()
    ack, plan = await mail.sent_to(ANA)
    thread_tag = ack["From"].addresses[0].addr_spec
    await mail.send(compose("Maybe later?", to=thread_tag, message_id="<r1@acme.example>",
                            in_reply_to=plan["Message-ID"]))
    unclear = (await mail.sent_to(ANA))[-1]
    assert "I could not tell what “Maybe later?” decides" in body(unclear)
    # no In-Reply-To (a client that drops it): the plus address still finds the thread
    await mail.send(compose("> approve\nrun the first 2", to=thread_tag,
                            message_id="<r2@acme.example>"))
    await mail.stack.drain()
    signups = [m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]]
    assert len(signups) == 2


async def test_forward_with_attachment_becomes_a_thread_with_inputs(mail: Mail) -> None:
    await mail.send((FIXTURES / "gmail_forward.eml").read_bytes())
    [thread] = await mail.stack.ok("GET", "/api/threads")
    full = await mail.stack.thread(thread["id"])
    kinds = [m["kind"] for m in full["messages"]]
    assert kinds == ["files", "request", "ack"]
    request = full["messages"][1]
    assert request["user"] == ANA
    assert request["text"].startswith("Please put the line items")
    assert "Forwarded email from Northwind Billing" in request["text"]
    [attachment] = full["messages"][0]["attachments"]
    assert attachment["name"] == "invoice-2026-118.csv"
    async with mail.stack.http.get(
            f"{mail.stack.base_url}/api/attachments/{attachment['id']}") as resp:
        assert (await resp.text()).startswith("Item,Qty,Price")
    variables, _ = await mail.stack.store.thread_state(thread["id"])
    email_input = json.loads(variables["email"])
    assert email_input["forwarded"]["subject"] == "Invoice 2026-118"
    assert email_input["attachments"][0]["text"].startswith("Item,Qty,Price")


async def test_stranger_gets_one_polite_reply_and_nothing_runs(mail: Mail) -> None:
    stranger = "eve@elsewhere.example"
    for n in range(2):
        await mail.send(compose(DEMO_REQUEST, sender=stranger, message_id=f"<s{n}@x.example>"),
                        sender=stranger)
    [reply] = await mail.sent_to(stranger)
    assert "nothing was done" in body(reply) and "SLUICE_EMAIL_ALLOW" in body(reply)
    assert reply["In-Reply-To"] == "<s0@x.example>"
    assert await mail.stack.ok("GET", "/api/threads") == []
    assert await mail.stack.redis.zcard("arq:queue") == 0
    # a whole allowed domain works
    await mail.send(compose(DEMO_REQUEST, sender="bo@friends.example"),
                    sender="bo@friends.example")
    assert len(await mail.stack.ok("GET", "/api/threads")) == 1


@pytest.mark.parametrize(("fixture", "says"), [
    ("malformed_no_boundary.eml", "MIME parts are broken"),
    ("empty_body.eml", "arrived empty"),
])
async def test_unusable_mail_gets_a_clear_reply_and_is_kept(mail: Mail, fixture: str,
                                                            says: str) -> None:
    raw = (FIXTURES / fixture).read_bytes()
    await mail.send(raw)
    [reply] = await mail.sent_to(ANA)
    assert says in body(reply)
    async with mail.stack.store.session() as s:
        [row] = (await s.scalars(select(MailRow).where(MailRow.direction == "in"))).all()
    assert row.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert row.error is not None and says in row.error
    assert await mail.stack.ok("GET", "/api/threads") == []


async def test_unknown_charset_is_read_and_the_reply_says_so(mail: Mail) -> None:
    await mail.send((FIXTURES / "unknown_charset.eml").read_bytes())
    texts = [body(m) for m in await mail.sent_to(ANA)]
    assert any("x-unknown-42" in t for t in texts)
    [thread] = await mail.stack.ok("GET", "/api/threads")
    [request] = await mail.stack.messages(thread["id"], "request")
    assert request["text"] == "Count the rows of the signups sheet."


async def test_a_signed_link_shows_the_decision_and_only_its_button_makes_it(
        mail: Mail) -> None:
    await mail.send(compose(DEMO_REQUEST))
    await mail.stack.drain()
    _ack, plan = await mail.sent_to(ANA)
    link = next(line for line in body(plan).splitlines() if line.startswith("Approve: "))
    url = mail.stack.base_url + link.removeprefix("Approve: http://sluice.test")
    http = mail.stack.http

    # Opening the link (as a mail scanner or a link preview does) decides nothing.
    for _ in range(2):
        async with http.get(url) as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert "Approve the plan in “" in page and f"as {ANA}?" in page
    assert '<form method="post">' in page and ">Approve</button>" in page
    await mail.stack.drain()
    assert [m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]] == []

    # A link changed into another decision, person or life is refused, and says what to do.
    fields = dict(parse_qsl(urlsplit(url).query))
    for name, other in (("action", "cancel"), ("for", "eve@example.com"),
                        ("until", str(int(fields["until"]) + 86_400))):
        async with http.post(url.split("?")[0], data={**fields, name: other}) as resp:
            assert resp.status == 403 and "Reply to the email instead" in await resp.text()

    # The button decides, as the person the email went to; a second press is told so.
    async with http.post(url.split("?")[0], data=fields) as resp:
        assert resp.status == 200 and "Queued" in await resp.text()
    async with http.post(url.split("?")[0], data=fields) as resp:
        assert resp.status == 409
    async with http.get(url) as resp:
        assert resp.status == 409 and "decided already" in await resp.text()
    await mail.stack.drain()
    assert len([m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]]) == 4
    [thread] = await mail.stack.ok("GET", "/api/threads")
    [shown] = await mail.stack.messages(thread["id"], "plan")
    assert f"Approved by {ANA}" in shown["text"]


async def test_an_expired_link_says_so_and_decides_nothing(mail: Mail) -> None:
    await mail.send(compose(DEMO_REQUEST))
    await mail.stack.drain()
    _ack, plan = await mail.sent_to(ANA)
    link = next(line for line in body(plan).splitlines() if line.startswith("Approve: "))
    url = mail.stack.base_url + link.removeprefix("Approve: http://sluice.test")
    fields = dict(parse_qsl(urlsplit(url).query))
    fields["until"] = str(int(time.time()) - 60)  # signed with the key, but a minute ago
    fields["sig"] = link_signature("test-key", *(fields[n] for n in
                                                 ("message", "action", "value", "for", "until")))
    async with mail.stack.http.get(url.split("?")[0], params=fields) as resp:
        assert resp.status == 410 and "This link expired on" in await resp.text()
    async with mail.stack.http.post(url.split("?")[0], data=fields) as resp:
        assert resp.status == 410
    await mail.stack.drain()
    assert [m for m in await mail.stack.outbox_mails() if ANA not in m["recipients"]] == []


async def test_the_bot_starts_inbound_smtp_when_asked(redis_server: EmbeddedRedis,
                                                      tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**ENV, "SLUICE_EMAIL_INBOUND": "true", "SLUICE_EMAIL_PORT": str(port)}
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=env) as stack:
        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail(ANA, ["sluice@localhost"], compose(DEMO_REQUEST))

        await asyncio.to_thread(deliver)
        [thread] = await stack.ok("GET", "/api/threads")
        assert thread["surface"] == "email"


async def test_too_large_mail_gets_a_reply_and_is_kept(redis_server: EmbeddedRedis,
                                                       tmp_path: Path) -> None:
    env = {**ENV, "SLUICE_EMAIL_MAX_MB": "0.01"}  # about 10 KB
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=env) as stack:
        deps = BotDeps(settings=stack.settings, store=stack.store, redis=stack.redis)
        server = await start_inbound(deps, host="127.0.0.1", port=0)
        try:
            mail = Mail(stack, server)
            await mail.send(compose("Count the rows\n" + ("x" * 70 + "\n") * 200))
            [reply] = await mail.sent_to(ANA)
            assert "I accept up to 10 KB" in body(reply)
            assert await stack.ok("GET", "/api/threads") == []
            async with stack.store.session() as s:
                [row] = (await s.scalars(select(MailRow).where(MailRow.direction == "in"))).all()
            assert len(row.raw) > 10_240 and row.error is not None
        finally:
            await server.stop()


async def test_email_to_an_automation_address_runs_it(mail: Mail) -> None:
    stack = mail.stack
    thread_id = await stack.ask(DEMO_REQUEST)
    await stack.drain()
    [plan] = await stack.messages(thread_id, "plan")
    await stack.click(plan, "approve")
    await stack.drain()
    [result] = await stack.messages(thread_id, "result")
    automation = await Automations(stack.store).save_from_run(result["meta"]["run_id"],
                                                              user="ana")
    address = f"sluice+{automation.id}@localhost"
    await mail.send((FIXTURES / "gmail_forward.eml").read_bytes().replace(
        b"To: sluice@localhost", f"To: {address}".encode()), to=address)
    [started] = await mail.sent_to(ANA)
    assert f"Started automation “{automation.name}”" in body(started)
    assert started["In-Reply-To"] == "<CAJx7Gm0f1=Qk2p@mail.gmail.com>"
    await stack.drain()
    results = await stack.messages(thread_id, "result")
    assert len(results) == 2 and "sent 4 emails" in results[-1]["text"]
    variables, _ = await stack.store.thread_state(thread_id)
    assert json.loads(variables["inputs"])["email"]["forwarded"]["subject"] == "Invoice 2026-118"
    # an unknown automation address gets a reply saying so, and nothing runs
    await mail.send(compose("run it", to="sluice+auto_000000000000@localhost",
                            message_id="<x.9@acme.example>"),
                    to="sluice+auto_000000000000@localhost")
    assert "no automation 'auto_000000000000'" in body((await mail.sent_to(ANA))[-1])
    assert len(await stack.store.list_runs()) == 2
