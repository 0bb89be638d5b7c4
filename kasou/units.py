"""Parsing and printing sizes."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int, default_unit: str = "M") -> int:
    """Bytes from '256M', '1G', '1.5GiB', '512' (default unit MiB, as QEMU's -m).

    Raises ValueError with a reason a user can act on.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a size such as 256M or 2G")
    if isinstance(value, int):
        number, unit = float(value), default_unit
    else:
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size; use e.g. 256M, 2G or 1.5GiB")
        number, unit = float(m.group(1)), (m.group(2) or default_unit).upper()
    size = int(number * _FACTOR[unit])
    if size <= 0:
        raise ValueError("must be greater than zero")
    return size


def format_size(nbytes: int) -> str:
    for unit in ("T", "G", "M", "K"):
        factor = _FACTOR[unit]
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    if nbytes >= _FACTOR["M"]:
        return f"{nbytes / _FACTOR['M']:.1f}M"
    return f"{nbytes}B"
