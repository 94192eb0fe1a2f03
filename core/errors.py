"""One base error for Sluice; each subclass carries a code and a message for its audience.

See STYLE.md rule 5: the person in the thread gets what happened and the next step, the model gets
line, caret and rule, the operator gets one log line with the job id. Never branch on message text.
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base error. `code` is stable and machine-readable; `message` is for the reader."""

    code: str = "sluice_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.fields}


class ConfigurationError(SluiceError):
    """A setting is missing or invalid; the message names the variable and the fix."""

    code = "configuration"


class NotFoundError(SluiceError):
    code = "not_found"


class InvalidInputError(SluiceError):
    code = "invalid_input"


class ModelError(SluiceError):
    """A model call failed after retries and fallbacks."""

    code = "model_error"


class IntegrationError(SluiceError):
    """An integration action failed; the message is written so the model can fix its call."""

    code = "integration_error"


class SandboxError(SluiceError):
    """The sandboxed program failed, broke a limit, or could not start."""

    code = "sandbox_error"
