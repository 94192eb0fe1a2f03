"""The newcomer's path: `sluice demo --headless` runs the bundled scenario as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.redis import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_headless_demo_passes_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLUICE_") and k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update({"SLUICE_HOME": str(tmp_path / ".sluice"),
                "SLUICE_CONSOLE_PORT": str(free_port()), "SLUICE_SMTP_PORT": str(free_port()),
                "SLUICE_EMAIL_PORT": str(free_port())})
    sluice = Path(sys.executable).parent / "sluice"
    for _ in range(2):  # a second demo in the same folder passes too: only its own mail counts
        done = subprocess.run([str(sluice), "demo", "--headless"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "demo passed: 4 emails sent" in done.stdout
        assert "sent 4 emails" in done.stdout and "updated 4 rows" in done.stdout
        assert "[attachment]" in done.stdout
    # Everything it started is gone: no redis-server or child left on its socket.
    assert not (tmp_path / ".sluice" / "redis" / "redis.sock").exists()
