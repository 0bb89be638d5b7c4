"""Kernel same-page merging (KSM): on/off and what it saves.

QEMU marks guest RAM mergeable by default (-machine mem-merge=on), so identical pages of
many similar guests are shared once the kernel's ksmd runs. `run` is 1 to merge, 0 to stop
merging (pages already merged stay merged), 2 to stop and unmerge everything.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from kasou.errors import EngineError

KSM_DIR = Path("/sys/kernel/mm/ksm")


class KsmInfo(BaseModel):
    available: bool
    running: bool = False
    pages_shared: int = 0        # distinct pages kept for everyone
    pages_sharing: int = 0       # pages that point at one of those: each one saved
    saved_bytes: int = 0
    full_scans: int = 0


def _int(d: Path, name: str) -> int:
    try:
        return int((d / name).read_text().strip())
    except (OSError, ValueError):
        return 0


def ksm_info(d: Path = KSM_DIR) -> KsmInfo:
    if not (d / "run").exists():
        return KsmInfo(available=False)
    sharing = _int(d, "pages_sharing")
    return KsmInfo(available=True, running=_int(d, "run") == 1,
                   pages_shared=_int(d, "pages_shared"), pages_sharing=sharing,
                   saved_bytes=sharing * os.sysconf("SC_PAGE_SIZE"),
                   full_scans=_int(d, "full_scans"))


def set_ksm(on: bool, unmerge: bool = False, d: Path = KSM_DIR) -> KsmInfo:
    """Start or stop ksmd; with unmerge, stopping also splits the pages it merged."""
    if not (d / "run").exists():
        raise EngineError("this kernel has no KSM (/sys/kernel/mm/ksm is missing)")
    value = "1" if on else ("2" if unmerge else "0")
    try:
        (d / "run").write_text(value)
    except OSError as e:
        raise EngineError(f"cannot switch KSM {'on' if on else 'off'}: {e.strerror or e} "
                          "(kasou must run as root)") from e
    return ksm_info(d)
