"""The hosted connectors as connectable services (`sluice connect hubspot`): what each asks for,
and how a stored connection becomes its integration, named as the connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from integrations.registry import CredentialField, Service, named
from integrations.saas import FACTORIES

if TYPE_CHECKING:
    from core.settings import Settings
    from integrations.base import Integration
    from integrations.vault import Credentials

_BASE_URL = CredentialField("base_url", "API base URL (leave empty for the vendor's)",
                            required=False)
_GOOGLE = (CredentialField("service_account_json", "Service account key (JSON), or leave empty "
                           "and give an access token", secret=True, required=False),
           CredentialField("access_token", "OAuth access token (when no service account)",
                           secret=True, required=False))


def _factory(service: str) -> Callable[[Credentials, Settings], Integration]:
    def build(credentials: Credentials, settings: Settings) -> Integration:
        integration = FACTORIES[service](dict(credentials), settings)
        # Programs reach a connection by its name ("crm", "books"), whatever the class calls it.
        integration.__class__ = named(type(integration), credentials.name)
        return integration

    return build


GOOGLE_SHEETS = Service(
    name="google_sheets", summary="A Google Sheets spreadsheet, with the local sheets' API.",
    fields=(CredentialField("spreadsheet_id", "Spreadsheet id (from its URL)"), *_GOOGLE,
            _BASE_URL),
    factory=_factory("google_sheets"))
AIRTABLE = Service(
    name="airtable", summary="An Airtable base, its tables with the local sheets' API.",
    fields=(CredentialField("api_key", "Personal access token", secret=True),
            CredentialField("base_id", "Base id (app…)"), _BASE_URL),
    factory=_factory("airtable"))
HUBSPOT = Service(
    name="hubspot", summary="HubSpot CRM: contacts, companies, deals, properties.",
    fields=(CredentialField("access_token", "Private app access token", secret=True),
            _BASE_URL),
    factory=_factory("hubspot"))
GOOGLE_DOCS = Service(
    name="google_docs", summary="Google Docs: create documents, append text and tables.",
    fields=(*_GOOGLE, _BASE_URL), factory=_factory("google_docs"))
QUICKBOOKS = Service(
    name="quickbooks", summary="QuickBooks Online: vendors, customers, bills, invoices.",
    fields=(CredentialField("realm_id", "Company (realm) id"),
            CredentialField("client_id", "App client id"),
            CredentialField("client_secret", "App client secret", secret=True),
            CredentialField("access_token", "OAuth access token", secret=True),
            CredentialField("refresh_token", "OAuth refresh token", secret=True,
                            required=False),
            _BASE_URL),
    factory=_factory("quickbooks"))
