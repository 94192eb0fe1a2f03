"""Connectors with AI-friendly actions (ARCHITECTURE.md, "AI-friendly integrations")."""

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

__all__ = ["ActionSpec", "Effect", "EffectCall", "Integration", "Resource", "Row", "action", "actions_of"]
