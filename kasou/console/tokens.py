"""Console tokens: HMAC-SHA256 signed, bound to one VM id, valid for TTL seconds.

A token is `<payload>.<signature>`, both base64url: the payload is JSON {vm, exp, n}.
Whoever holds one may see and type on that VM's screen until it expires, so tokens are
short-lived and are minted only for callers allowed to operate the VM. The key lives in
the data dir (mode 0600) so tokens survive a daemon restart but not a new data dir.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from kasou.errors import AuthError

TTL_SECONDS = 60
KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(path: Path) -> bytes:
    """The signing key, made once with O_EXCL so two daemons never race to two keys."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise AuthError(f"console key {path} is damaged; delete it to make a new one")\
                from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class ConsoleTokens:
    def __init__(self, key: bytes, ttl: float = TTL_SECONDS) -> None:
        self._key = key
        self.ttl = ttl

    def mint(self, vm_id: str, now: float | None = None) -> tuple[str, float]:
        """A token for `vm_id` and when it expires (Unix time)."""
        exp = (time.time() if now is None else now) + self.ttl
        payload = _b64(json.dumps({"vm": vm_id, "exp": exp, "n": secrets.token_hex(8)},
                                  separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", exp

    def verify(self, token: str, vm_id: str, now: float | None = None) -> None:
        """Raise AuthError unless `token` is ours, unexpired and for `vm_id`."""
        if self.vm_of(token, now) != vm_id:
            raise AuthError("console token is for another VM")

    def vm_of(self, token: str, now: float | None = None) -> str:
        """The VM id a genuine, unexpired token was minted for; AuthError otherwise."""
        payload, _, sig = token.partition(".")
        if not payload or not sig or not hmac.compare_digest(sig, self._sign(payload)):
            raise AuthError("console token is not valid")
        try:
            claims = json.loads(_unb64(payload))
            token_vm, exp = str(claims["vm"]), float(claims["exp"])
        except (ValueError, KeyError, TypeError):
            raise AuthError("console token is not valid") from None
        if (time.time() if now is None else now) >= exp:
            raise AuthError("console token has expired; ask for a new one")
        return token_vm

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
