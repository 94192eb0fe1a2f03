"""A real IMAP server for tests: Debian's dovecot, run on a free loopback port with a generated
configuration in a temporary folder (`make mail-tools` installs it when run as root)."""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot"
                                      if Path("/usr/sbin/dovecot").exists() else None)
MISSING = ("dovecot is not installed: run `make mail-tools` as root (it installs Debian's "
           "dovecot-imapd with apt), or install dovecot-imapd yourself")

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
default_internal_user = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Archive {{
    auto = create
  }}
  mailbox Invoices {{
    auto = create
  }}
  mailbox Sent {{
    auto = create
    special_use = \\Sent
  }}
}}
"""


@dataclass(frozen=True)
class Dovecot:
    host: str
    port: int
    user: str
    password: str
    maildir: Path
    uid: int
    gid: int

    def deliver(self, name: str, raw: bytes) -> None:
        """Put a message in the user's INBOX, as a local delivery agent would."""
        path = self.maildir / "new" / f"{time.time_ns()}.{name}.localhost"
        path.write_bytes(raw)
        os.chown(path, self.uid, self.gid)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def dovecot(user: str = "ana", password: str = "app-pw-5up3r-s3cret") -> Iterator[Dovecot]:
    """A dovecot process serving one user's Maildir on a free port, stopped afterwards."""
    assert DOVECOT is not None, MISSING
    root = Path(tempfile.mkdtemp(prefix="sluice-dovecot-"))
    root.chmod(0o755)  # the mail process runs as the mail user and must reach the homes
    if os.geteuid() == 0:
        account = pwd.getpwnam("dovecot")
        uid, gid, internal, login = account.pw_uid, account.pw_gid, "dovecot", "dovenull"
    else:
        uid, gid = os.getuid(), os.getgid()
        internal = login = getpass.getuser()
    home = root / "home" / user
    maildir = home / "Maildir"
    for folder in (home, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, uid, gid)
    (root / "users").write_text(f"{user}:{{PLAIN}}{password}::::{home}\n")
    port = _free_port()
    (root / "dovecot.conf").write_text(_CONFIG.format(root=root, uid=uid, gid=gid, port=port,
                                                      internal=internal, login=login))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(process, port, root)
        yield Dovecot("127.0.0.1", port, user, password, maildir, uid, gid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], port: int, root: Path) -> None:
    for _ in range(400):
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
            raise RuntimeError(f"dovecot exited ({process.returncode}): {output} {log}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("dovecot did not start listening")
