"""A cpio "newc" archive writer for initramfs images.

Written in Python rather than with cpio(1) so every entry is owned by root and device
nodes such as /dev/console can be made without being root, and so the same inputs give
the same bytes (fixed mtime, sorted entries).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field
from pathlib import Path

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str          # inside the archive, no leading slash
    mode: int          # type bits | permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(entry: Entry, ino: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, mtime, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name), 0)
    head = _MAGIC + b"".join(b"%08X" % f for f in fields)
    return head + name + _pad4(len(head) + len(name))


@dataclass
class Archive:
    """Entries to write; parents are created on demand, later adds replace earlier ones."""

    mtime: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)

    def _add(self, entry: Entry) -> None:
        path = entry.path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"bad archive path {entry.path!r}")
        parent = path.rpartition("/")[0]
        if parent and parent not in self.entries:
            self.dir(parent)
        self.entries[path] = Entry(path, entry.mode, entry.data, entry.rdev)

    def dir(self, path: str, perm: int = 0o755) -> None:
        self._add(Entry(path, stat.S_IFDIR | perm))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._add(Entry(path, stat.S_IFREG | perm, data))

    def copy(self, path: str, source: Path, perm: int | None = None) -> None:
        mode = source.stat().st_mode & 0o777 if perm is None else perm
        self.file(path, source.read_bytes(), mode)

    def symlink(self, path: str, target: str) -> None:
        self._add(Entry(path, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(Entry(path, stat.S_IFCHR | perm, rdev=(major, minor)))

    def to_bytes(self) -> bytes:
        out = bytearray()
        # Sorted, so a directory always precedes what it contains.
        for ino, path in enumerate(sorted(self.entries), start=1):
            entry = self.entries[path]
            out += _header(entry, ino, self.mtime) + entry.data + _pad4(len(entry.data))
        out += _header(Entry(_TRAILER, 0), 0, 0)
        return bytes(out)

    def write_gzip(self, dest: Path, level: int = 9) -> int:
        """Write the gzip-compressed archive; returns its size in bytes."""
        data = gzip.compress(self.to_bytes(), compresslevel=level, mtime=self.mtime)
        dest.write_bytes(data)
        return len(data)
