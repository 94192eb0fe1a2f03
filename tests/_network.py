"""A guard that makes any test fail which tries to reach past loopback (a real provider, say)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect


class NetworkBlockedError(OSError):
    pass


def _is_local(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_local(host):
        raise NetworkBlockedError(f"tests may not reach {host!r}: only loopback is allowed")
    return _real_getaddrinfo(host, *args, **kwargs)


class _GuardedSocket(socket.socket):
    def connect(self, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise NetworkBlockedError(f"tests may not connect to {address!r}")
        _real_connect(self, address)

    def connect_ex(self, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise NetworkBlockedError(f"tests may not connect to {address!r}")
        return super().connect_ex(address)


def install() -> None:
    socket.getaddrinfo = _guarded_getaddrinfo
    socket.socket = _GuardedSocket  # type: ignore[misc]
