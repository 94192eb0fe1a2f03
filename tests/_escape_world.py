"""The world the escape tests run in (tests/test_escapes.py, tests/test_escapes_past_policy.py):
a Sluice home holding a canary secret, a local catalog served to real sandbox children, and a
loopback server nobody should reach. See test_escapes.py for what each attempt must show.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.protocols import ChatMessage, Completion, TaskKind
from core.settings import Settings, load_settings
from integrations.catalog import Catalog, build_local_catalog
from workers.sandbox import SandboxLimits, SandboxOutcome, detect_isolation, run_sandboxed

CANARY = "canary-" + secrets.token_hex(16)
CANARY_VARIABLE = "SLUICE_CANARY_SECRET"
ISOLATION = detect_isolation()
CONFINED = ISOLATION in ("bwrap", "unshare")
# Under bwrap /tmp is always a fresh tmpfs; elsewhere only hidden_paths hides the home.
VISIBLE_TMP = "/var/tmp" if Path("/var/tmp").is_dir() else None
# The canned model fails like an HTTP client does, with the request URL (and its key) in the text.
LEAKY_PROMPT = "status of the provider"
LEAKY_ERROR = ("Client error '401 Unauthorized' for url "
               "'https://generativelanguage.googleapis.com/v1beta/models?key={key}'")
SURVIVOR = ("rows = sheets.open('signups').rows()\n"
            "print('alive', len(rows), sum(range(10)))\n")


class CannedModels:
    """A `ModelClient` answering every prompt with canned text (one prompt fails, leakily)."""

    async def complete(
        self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        if messages[-1].content == LEAKY_PROMPT:
            raise RuntimeError(LEAKY_ERROR.format(key=os.environ[CANARY_VARIABLE]))
        return Completion(text="Thanks, we will be in touch.", model="canned")


@dataclass
class World:
    """What the attempts run against: settings with a secret-holding home, a loopback server."""

    home: Path
    settings: Settings
    listener: socket.socket

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def catalog(self) -> Catalog:
        return build_local_catalog(self.settings, CannedModels())

    def limits(self, **changes: Any) -> SandboxLimits:
        base = SandboxLimits.from_settings(self.settings)
        fast = {"cpu_s": 5, "wall_s": 10.0, "memory_mb": 256, "output_kb": 64}
        return base.model_copy(update={**fast, **changes})

    def render(self, program: str) -> str:
        return (program.replace("@HOME@", str(self.home)).replace("@PORT@", str(self.port))
                .replace("@WORKER_PID@", str(os.getpid())))

    def nobody_connected(self) -> bool:
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            return True
        connection.close()
        return False


def make_world() -> Iterator[World]:
    """The world, for the `world` fixture (tests/conftest.py): made, then removed."""
    home = Path(tempfile.mkdtemp(prefix="sluice-escapes-", dir=VISIBLE_TMP))
    (home / ".env").write_text(f"SLUICE_MODEL_API_KEY={CANARY}\n")
    (home / "sheets").mkdir()
    (home / "sheets" / "signups.csv").write_text(
        "Name,Email,Budget\nAna,ana@example.com,\nBo,bo@example.com,5000\n")
    with socket.socket() as probe:  # a port nobody listens on: mail fails fast and says so
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    settings = load_settings({"SLUICE_HOME": str(home), "SLUICE_SMTP_PORT": str(smtp_port)},
                             env_file=False)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CANARY_VARIABLE, CANARY)
        yield World(home=home, settings=settings, listener=listener)
    listener.close()
    shutil.rmtree(home, ignore_errors=True)


async def run(world: World, program: str, *, isolation: str = ISOLATION,
              **limits: Any) -> SandboxOutcome:
    catalog = world.catalog()
    return await run_sandboxed(world.render(program), manifest=catalog.manifest(),
                               handler=catalog.dispatch, limits=world.limits(**limits),
                               isolation=isolation)


def assert_no_canary(outcome: SandboxOutcome) -> None:
    dumped = outcome.model_dump_json() + repr(outcome)
    assert CANARY not in dumped
    assert CANARY.removeprefix("canary-") not in dumped


async def assert_survives(world: World) -> None:
    outcome = await run(world, SURVIVOR)
    assert outcome.ok, outcome.error
    assert outcome.output == "alive 2 45\n"


# Attempts that assume a way past the in-process checks print this once there.
PAST = "past the policy"


def crafted_attribute_program(attribute: str) -> str:
    """A program that reads `random.<attribute>` through a function built from bytecode with
    `types.FunctionType` and `types.CodeType` (reachable as `dataclasses.types`): the static
    policy never sees the attribute name."""
    source = compile(f"lambda o: o.{attribute}", "<x>", "eval")
    code = next(c for c in source.co_consts if isinstance(c, types.CodeType))
    fields = [code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
              code.co_nlocals, code.co_stacksize, code.co_flags, code.co_code, code.co_consts,
              code.co_names, code.co_varnames, "x", "x", "x", 1, code.co_linetable,
              code.co_exceptiontable]
    return ("import dataclasses, random\n"
            "T = dataclasses.types\n"
            f"peek = T.FunctionType(T.CodeType({', '.join(repr(f) for f in fields)}), {{}})\n"
            "found = peek(random)\n"
            f"print({PAST!r})\n")
