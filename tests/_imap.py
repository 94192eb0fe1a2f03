"""A real IMAP server for tests: Dovecot on a free loopback port, one user, Maildir in a temp dir.

Needs the `dovecot` binary (`make mail-tools` installs dovecot-imapd with apt as root); tests
that use it are skipped with that instruction when it is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from infra.redis import free_port

USER = "sluice"
PASSWORD = "imap-test-password"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)


class Dovecot:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sluice-imap-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        owner = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        self.uid, self.gid = owner.pw_uid, owner.pw_gid

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / USER

    def _config(self) -> str:
        r = self.root
        login_user = "dovenull" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        internal = "dovecot" if os.geteuid() == 0 else login_user
        return f"""
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{r}/mail/%u
first_valid_uid = 1
default_login_user = {login_user}
default_internal_user = {internal}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""

    def start(self) -> None:
        binary = dovecot_binary()
        assert binary is not None
        (self.root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for path in [self.root / "mail", self.maildir, *self.maildir.iterdir()]:
            os.chown(path, self.uid, self.gid)
        (self.root / "dovecot.conf").write_text(self._config())
        self.proc = subprocess.Popen([binary, "-F", "-c", str(self.root / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = (self.root / "dovecot.log")
                raise RuntimeError(f"dovecot exited: {err}\n"
                                   f"{log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("dovecot did not listen in time")

    def deliver(self, name: str, raw: bytes) -> None:
        """Put a message in the user's INBOX (as a local delivery agent would)."""
        path = self.maildir / "new" / f"{time.time_ns()}.{name}.localhost"
        path.write_bytes(raw)
        os.chown(path, self.uid, self.gid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
