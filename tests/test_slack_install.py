"""Installing Sluice into a workspace by OAuth, and the app manifest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from bot.slack.clients import BOT_SCOPES
from tests._slack_harness import APP_TOKEN, BOT_TOKEN, CLIENT_ID, CLIENT_SECRET, SlackHarness
from tests._stack import DEMO_REQUEST

MANIFEST = Path(__file__).resolve().parents[1] / "infra" / "slack" / "manifest.yaml"


async def test_oauth_install_stores_the_token_that_later_events_use(
        redis_server: Any, tmp_path: Path) -> None:
    async with SlackHarness.running(redis_url=redis_server.url, home=tmp_path,
                                    oauth_codes={"code-1": BOT_TOKEN}) as slack:
        # Before installing, the workspace has no token: a mention is refused, nothing stored.
        assert await slack.event(slack.mention_event(DEMO_REQUEST)) == 200
        await slack.settled()
        assert await slack.stack.store.list_threads() == []

        http, base = slack.stack.http, slack.stack.base_url
        async with http.get(base + "/slack/install") as resp:
            assert resp.status == 200
            page, cookie = await resp.text(), resp.headers["Set-Cookie"].split(";")[0]
        [authorize] = re.findall(r'href="([^"]+oauth/v2/authorize[^"]*)"', page)
        query = parse_qs(urlsplit(authorize.replace("&amp;", "&")).query)
        assert authorize.startswith(slack.fake.base_url + "/oauth/v2/authorize")
        assert query["client_id"] == [CLIENT_ID] and "chat:write" in query["scope"][0]

        callback = f"{base}/slack/oauth_redirect?code=code-1&state={query['state'][0]}"
        async with http.get(callback, headers={"Cookie": cookie}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(callback, headers={"Cookie": cookie}) as resp:
            assert resp.status >= 400  # a state is used once
        [exchange] = slack.fake.called("oauth.v2.access")
        assert exchange["code"] == "code-1" and CLIENT_SECRET not in str(exchange)

        root = await slack.mention(DEMO_REQUEST)
        [ack] = slack.thread(root)
        assert "writing a program" in ack.text
        [thread] = await slack.stack.store.list_threads()
        assert thread.surface == "slack"
        assert all(c.status == 200 for c in slack.fake.calls if c.method != "oauth.v2.access")


def test_manifest_asks_for_what_the_app_uses() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(BOT_SCOPES)
    settings = manifest["settings"]
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_home_opened", "app_mention", "message.im"}
    assert settings["interactivity"]["is_enabled"] is True
    urls = [settings["event_subscriptions"]["request_url"],
            settings["interactivity"]["request_url"],
            manifest["features"]["slash_commands"][0]["url"]]
    assert all(u.endswith("/slack/events") for u in urls)
    assert manifest["oauth_config"]["redirect_urls"][0].endswith("/slack/oauth_redirect")
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


async def test_socket_mode_takes_requests_over_the_socket(redis_server: Any,
                                                          tmp_path: Path) -> None:
    async with SlackHarness.running(redis_url=redis_server.url, home=tmp_path,
                                    environ={"SLACK_APP_TOKEN": APP_TOKEN}) as slack:
        await slack.fake.wait_for(lambda: bool(slack.fake.sockets))
        event = slack.mention_event(DEMO_REQUEST)
        envelope_id = await slack.fake.send_envelope("events_api", slack.event_callback(event))
        await slack.fake.wait_for(
            lambda: any(a.get("envelope_id") == envelope_id for a in slack.fake.acks))
        await slack.settled()
        [ack] = slack.thread(str(event["ts"]))
        assert "writing a program" in ack.text
        [opened] = [c for c in slack.fake.calls if c.method == "apps.connections.open"]
        assert opened.status == 200
