"""API tokens: `kasou_<id>_<secret>`, the secret stored only as an scrypt hash.

scrypt (memory-hard, in the standard library) costs ≈ 30 ms per check by design, so a
verified token is remembered in memory for a short while; revoking clears that at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

PREFIX = "kasou"
_N, _R, _P = 1 << 14, 8, 1
CACHE_SECONDS = 60.0


def new_secret() -> tuple[str, str]:
    return secrets.token_hex(6), secrets.token_urlsafe(32)


def format_token(token_id: str, secret: str) -> str:
    return f"{PREFIX}_{token_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                         p=int(p), dklen=32)
    return hmac.compare_digest(got.hex(), digest)


class VerifiedCache:
    """sha256(token) -> (token id, when it was checked)."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[str, float]] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> str | None:
        hit = self._seen.get(self._key(token))
        if hit is None or time.monotonic() - hit[1] > self.ttl:
            return None
        return hit[0]

    def put(self, token: str, token_id: str) -> None:
        self._seen[self._key(token)] = (token_id, time.monotonic())

    def forget(self, token_id: str) -> None:
        for key in [k for k, (tid, _) in self._seen.items() if tid == token_id]:
            del self._seen[key]
