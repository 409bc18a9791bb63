"""The control socket of a satellite host process: one satellite's kill, restart, pause, resume, status.

A signal reaches a whole process, so ``orbitmesh chaos kill sat-3`` cannot
signal a host of K satellites without killing all K.  Each host listens on a
Unix socket in the fleet directory instead (``hosts/<host>.sock``, mode 0600
in a 0700 directory: only the fleet's owner can connect, like ``token``), and
a request must also carry the fleet's API token when the fleet has one: the
same secret that mutating API calls need (agent/serve/auth.py).

One request, one reply, each a JSON line of at most ``MAX_LINE`` bytes:
``{"action": "kill"|"restart"|"pause"|"resume"|"status", "node": "sat-3", "token": "..."}`` →
``{"ok": true, "state": "running"|"paused"|"down", "detail": "..."}`` or
``{"ok": false, "error": "..."}``.  This module is the client side (plain
sockets: the chaos tools are synchronous); ``agent/sat_host.py`` serves it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

MAX_LINE = 4096
TIMEOUT_S = 30.0            # a restart waits for the satellite's API to answer
ACTIONS = ("kill", "restart", "pause", "resume", "status")
# AF_UNIX paths are limited to 108 bytes (sun_path) on Linux, less the NUL.
MAX_SOCKET_PATH = 107


class ControlError(RuntimeError):
    pass


def socket_path(fleet_dir: Path, host: str) -> Path:
    path = Path(fleet_dir).resolve() / "hosts" / f"{host}.sock"
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise ControlError(f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes (a Unix socket's "
                           f"limit): use a shorter fleet directory")
    return path


def request(path: Path, action: str, node: str, token: str | None, timeout: float = TIMEOUT_S) -> dict:
    """Ask the host behind ``path`` to do ``action`` to ``node``; its reply, or :class:`ControlError`."""
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    line = json.dumps({"action": action, "node": node, "token": token}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(line)
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                chunk = s.recv(MAX_LINE)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"cannot reach the satellite host at {path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the satellite host at {path} gave no answer") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise ControlError(str(reply.get("error") if isinstance(reply, dict) else reply))
    return reply
