"""Does a file qemu-img calls "raw" look like a disk? Every file is a valid raw image, so a
text file, an archive or a web page's error body would import as a "disk" unless its
content is checked. A disk has a partition table, a file system or an ISO 9660 header."""

from __future__ import annotations

from pathlib import Path

# (offset, magic, what it is)
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (512, b"EFI PART", "a GPT partition table"),
    (0x8001, b"CD001", "an ISO 9660 image"),
    (0x438, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (0x10040, b"_BHRfS_M", "a btrfs file system"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0, b"hsqs", "a squashfs image"),
    (4086, b"SWAPSPACE2", "a swap area"),
)
_MBR_SIGNATURE = (510, b"\x55\xaa")
_READ = 0x10048


def disk_kind(path: Path) -> str | None:
    """What the file looks like ("an MBR partition table", ...), or None."""
    with path.open("rb") as f:
        head = f.read(_READ)
    return kind_of(head)


def kind_of(head: bytes) -> str | None:
    for offset, magic, what in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return what
    offset, sig = _MBR_SIGNATURE
    if head[offset:offset + 2] == sig:
        return "an MBR partition table or boot sector"
    return None
