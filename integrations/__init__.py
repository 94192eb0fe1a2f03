"""Connectors with AI-friendly actions (ARCHITECTURE.md, "AI-friendly integrations").

The contract (`base`) and the wire format (`wire`) load eagerly: the sandbox side imports them and
must stay light. The connectors and the catalog load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from integrations.base import (
    ActionSpec,
    Effect,
    EffectCall,
    Integration,
    Resource,
    Row,
    action,
    actions_of,
)

if TYPE_CHECKING:
    from integrations.ai import AI
    from integrations.catalog import Catalog, build_local_catalog
    from integrations.mail import Attachment, Email, LocalMail
    from integrations.sheets import LocalSheets, Sheet

_LAZY = {
    "AI": "integrations.ai",
    "Attachment": "integrations.mail",
    "Catalog": "integrations.catalog",
    "Email": "integrations.mail",
    "LocalMail": "integrations.mail",
    "LocalSheets": "integrations.sheets",
    "Sheet": "integrations.sheets",
    "build_local_catalog": "integrations.catalog",
}

__all__ = [
    "AI",
    "ActionSpec",
    "Attachment",
    "Catalog",
    "Effect",
    "EffectCall",
    "Email",
    "Integration",
    "LocalMail",
    "LocalSheets",
    "Resource",
    "Row",
    "Sheet",
    "action",
    "actions_of",
    "build_local_catalog",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'integrations' has no attribute {name!r}")
