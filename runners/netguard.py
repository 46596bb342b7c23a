"""A guard that fails any network connection beyond the loopback interface.

The lab must run fully offline: frameworks' telemetry, tokenizer downloads and hub lookups
are defects here. The guard is a Python audit hook (PEP 578) on ``socket.connect`` and
``socket.getaddrinfo``, so it sees every connection this process's Python code attempts,
whichever library makes it, without patching any of them. Audit hooks cannot be removed;
the guard is armed and disarmed by a flag.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkViolation(RuntimeError):
    """Code tried to reach something other than 127.0.0.1 while the guard was armed."""


def is_loopback(host: Any) -> bool:
    """True for loopback addresses and names, and for Unix-domain socket paths."""
    if isinstance(host, (bytes, bytearray)):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or host.startswith("/"):
        return True  # AF_UNIX paths never leave the machine
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass
class _GuardState:
    armed: int = 0
    allowed: Counter[str] = field(default_factory=Counter)
    """Hosts (names and addresses) beyond loopback that an armed guard lets through, e.g. a live endpoint."""
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _GuardState()
_INSTALLED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _STATE.armed:
        return
    if event == "socket.connect":
        sock, address = args
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6) and not _permitted(address[0]):
            _refuse(f"connect to {address[0]}:{address[1]}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host is not None and not _permitted(host):
            _refuse(f"name lookup of {host!r}")


def _permitted(host: Any) -> bool:
    if is_loopback(host):
        return True
    if isinstance(host, (bytes, bytearray)):
        host = host.decode(errors="replace")
    return isinstance(host, str) and _STATE.allowed[host.split("%", 1)[0].lower()] > 0


def _refuse(what: str) -> None:
    with _STATE.lock:
        _STATE.violations.append(what)
    raise NetworkViolation(f"network guard: {what} refused; coordlab runs on 127.0.0.1 only")


@contextlib.contextmanager
def loopback_only(allow: Iterable[str] = ()) -> Iterator[None]:
    """Within the block, refuse (and record) every connection or name lookup beyond loopback.

    ``allow`` names the few hosts a live run must reach (its model endpoint's name and the
    addresses it resolves to); everything else stays refused.
    """
    global _INSTALLED
    allowed = [host.lower() for host in allow]
    if not _INSTALLED:
        sys.addaudithook(_audit)
        _INSTALLED = True
    with _STATE.lock:
        _STATE.armed += 1
        _STATE.allowed.update(allowed)
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.armed -= 1
            _STATE.allowed.subtract(allowed)


def url_address(url: str) -> tuple[str, int]:
    """The host and port an http(s) URL connects to; ValueError for anything else."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError(f"{url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def url_hosts(url: str) -> list[str]:
    """What :func:`loopback_only` must allow for ``url``: its host name and the addresses it resolves to.

    Resolve before arming the guard (the lookup itself is what the guard would refuse).
    """
    host, port = url_address(url)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = set()
    return [host, *sorted(addresses)]


def violations() -> list[str]:
    """Every refused attempt so far in this process."""
    with _STATE.lock:
        return list(_STATE.violations)
