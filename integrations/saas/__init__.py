"""Connectors to hosted services, each through the vendor's official SDK (ARCHITECTURE.md,
"AI-friendly integrations"). One module per service; `FACTORIES` builds each from the
credentials stored for a workspace (every service also takes an optional `base_url`, used by
tests to reach a local fake of the vendor's API).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.errors import IntegrationError
from integrations.base import Integration

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["FACTORIES", "REQUIRED"]

# The credential fields each service needs (besides an optional `base_url`).
REQUIRED: dict[str, tuple[str, ...]] = {
    "google_sheets": ("spreadsheet_id",),  # and service_account_json or access_token
    "airtable": ("api_key", "base_id"),
    "hubspot": ("access_token",),
    "google_docs": (),  # service_account_json or access_token
    "quickbooks": ("realm_id", "client_id", "client_secret", "access_token"),
}


def _need(service: str, credentials: dict[str, str]) -> None:
    missing = [key for key in REQUIRED[service] if not credentials.get(key)]
    if missing:
        raise IntegrationError(
            f"{service} is missing {', '.join(missing)}. Add it with "
            f"`sluice connect {service}`.", service=service, missing=missing,
        )


def _google_sheets(credentials: dict[str, str], settings: Settings) -> Integration:
    from integrations.saas.google_sheets import SCOPES, GoogleSheets, google_credentials

    _need("google_sheets", credentials)
    return GoogleSheets(
        spreadsheet_id=credentials["spreadsheet_id"],
        credentials=google_credentials(credentials, SCOPES),
        base_url=credentials.get("base_url") or "https://sheets.googleapis.com",
    )


def _airtable(credentials: dict[str, str], settings: Settings) -> Integration:
    from integrations.saas.airtable import AirtableSheets

    _need("airtable", credentials)
    return AirtableSheets(
        api_key=credentials["api_key"], base_id=credentials["base_id"],
        base_url=credentials.get("base_url") or "https://api.airtable.com",
    )


def _hubspot(credentials: dict[str, str], settings: Settings) -> Integration:
    from integrations.saas.hubspot import HubSpot

    _need("hubspot", credentials)
    return HubSpot(access_token=credentials["access_token"],
                   base_url=credentials.get("base_url") or "https://api.hubapi.com")


def _google_docs(credentials: dict[str, str], settings: Settings) -> Integration:
    from integrations.saas import google_docs
    from integrations.saas.google_sheets import google_credentials

    return google_docs.GoogleDocs(
        credentials=google_credentials(credentials, google_docs.SCOPES),
        base_url=credentials.get("base_url") or "https://docs.googleapis.com/",
    )


def _quickbooks(credentials: dict[str, str], settings: Settings) -> Integration:
    from integrations.saas.quickbooks import QuickBooksOnline

    _need("quickbooks", credentials)
    return QuickBooksOnline(
        realm_id=credentials["realm_id"], client_id=credentials["client_id"],
        client_secret=credentials["client_secret"], access_token=credentials["access_token"],
        refresh_token=credentials.get("refresh_token", ""),
        base_url=credentials.get("base_url") or "https://quickbooks.api.intuit.com",
    )


FACTORIES: dict[str, Callable[[dict[str, str], Settings], Integration]] = {
    "google_sheets": _google_sheets,
    "airtable": _airtable,
    "hubspot": _hubspot,
    "google_docs": _google_docs,
    "quickbooks": _quickbooks,
}
