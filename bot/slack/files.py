"""Files shared with a Slack request, downloaded with the bot token into thread attachments.

The token is sent only to Slack's file hosts and to the host of `SLACK_API_URL` (a GovSlack or
Enterprise proxy, or the tests' local Slack), never to another host a payload names.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from core.errors import InvalidInputError
from core.settings import Settings
from core.store import Store
from core.types import Attachment

log = logging.getLogger(__name__)
FILE_HOSTS = frozenset({"files.slack.com", "files.slack-gov.com"})
MAX_FILE_BYTES = 25 * 1024 * 1024
MAX_FILES = 10


def trusted(settings: Settings, url: str) -> bool:
    parts = urlsplit(url)
    api = urlsplit(settings.slack_api_url)
    return parts.scheme in ("https", api.scheme) and (
        parts.hostname in FILE_HOSTS or parts.netloc == api.netloc)


async def download_files(settings: Settings, store: Store, *, thread_id: str, token: str,
                         files: list[dict[str, Any]]) -> list[Attachment]:
    """Store each shared file with the thread; raises InvalidInputError saying which failed."""
    if len(files) > MAX_FILES:
        raise InvalidInputError(f"I can take at most {MAX_FILES} files with one request; "
                                f"this one has {len(files)}. Share fewer and ask again.")
    attachments = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for shared in files:
            data = await _download(settings, http, token, shared)
            attachments.append(await store.add_attachment(
                thread_id, name=str(shared.get("name") or "file")[:200],
                content_type=str(shared.get("mimetype") or "application/octet-stream"),
                data=data))
    return attachments


async def _download(settings: Settings, http: aiohttp.ClientSession, token: str,
                    shared: dict[str, Any]) -> bytes:
    name = shared.get("name") or shared.get("id") or "a file"
    url = str(shared.get("url_private_download") or shared.get("url_private") or "")
    if not url or not trusted(settings, url):
        raise InvalidInputError(f"I could not fetch {name}: Slack gave no download address I "
                                "trust. Share it again, or attach it as a CSV or XLSX file.")
    if int(shared.get("size") or 0) > MAX_FILE_BYTES:
        raise InvalidInputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB; share a "
                                "smaller file.")
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.content.read(MAX_FILE_BYTES + 1)
        html = resp.content_type == "text/html" and shared.get("mimetype") != "text/html"
        if resp.status != 200 or html:
            log.warning("downloading Slack file %s failed with HTTP %s", shared.get("id"),
                        resp.status)
            raise InvalidInputError(f"I could not download {name} (HTTP {resp.status}). The app "
                                    "needs the files:read scope; reinstall it and share again.")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInputError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MB.")
    return data
