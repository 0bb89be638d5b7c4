"""Where kasou keeps things on disk.

Data dir: $KASOU_HOME, else /var/lib/kasou as root, else ~/.local/share/kasou.
Image cache: $KASOU_IMAGES, else <cache>/images where cache is /var/cache/kasou as root,
else ~/.cache/kasou. Images are rebuildable from Debian packages, so they live in a cache
shared by every data dir (tests use many data dirs, one image build).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kasou.errors import InvalidSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
SAFE_NAME = re.compile(NAME_PATTERN)


def check_name(name: str, field: str = "name") -> str:
    """A name that is safe as one path component: no slash, never starting with a dot."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise InvalidSpec(
            f"{field} {name!r} is not allowed: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            field=field,
        )
    return name


def _is_root() -> bool:
    return os.geteuid() == 0


def data_dir() -> Path:
    env = os.environ.get("KASOU_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if _is_root():
        return Path("/var/lib/kasou")
    return Path.home() / ".local/share/kasou"


def cache_dir() -> Path:
    env = os.environ.get("KASOU_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if _is_root():
        return Path("/var/cache/kasou")
    return Path.home() / ".cache/kasou"


def images_dir() -> Path:
    env = os.environ.get("KASOU_IMAGES")
    if env:
        return Path(env).expanduser().resolve()
    return cache_dir() / "images"


@dataclass(frozen=True)
class Layout:
    """Paths under one data dir."""

    root: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(data_dir())

    @property
    def db(self) -> Path:
        return self.root / "kasou.db"

    @property
    def socket(self) -> Path:
        return self.root / "kasou.sock"

    @property
    def token_file(self) -> Path:
        return self.root / "api.token"

    @property
    def daemon_pid(self) -> Path:
        return self.root / "kasoud.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "kasoud.log"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    def vm_dir(self, vm_id: str) -> Path:
        # A checked name has no slash and does not start with a dot, so it is one path
        # component under vms/ and cannot escape it (no need to resolve links per call).
        return self.vms / check_name(vm_id, "id")

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.vms.mkdir(exist_ok=True, mode=0o711)
