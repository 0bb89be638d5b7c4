"""Quota arithmetic (pure) and the registry of what counts against a project.

Each area registers a usage function (project -> {quota field: amount}); a check adds the
request to the current usage and refuses it if any limit would be passed, naming the
resource, the limit and the usage. Callers hold the lock that makes check + create atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kasou.errors import QuotaExceeded
from kasou.tenancy.models import Quota

Usage = dict[str, int]
UsageFn = Callable[[str], Mapping[str, int]]

UNITS = {"memory_mib": "MiB", "disk_bytes": "bytes"}


def check(project: str, quota: Quota, used: Mapping[str, int], add: Mapping[str, int]) -> None:
    short = []
    for field, amount in add.items():
        limit = getattr(quota, field)
        if limit is None or amount <= 0:
            continue
        have = used.get(field, 0)
        if have + amount > limit:
            unit = UNITS.get(field, "")
            short.append(f"{field}: {have} used + {amount} asked > {limit} allowed"
                         + (f" {unit}" if unit else ""))
    if short:
        raise QuotaExceeded(f"quota of project {project!r} exceeded: " + "; ".join(short),
                            field=next(iter(short)).split(":")[0])


class UsageRegistry:
    def __init__(self) -> None:
        self._fns: list[UsageFn] = []

    def register(self, fn: UsageFn) -> None:
        self._fns.append(fn)

    def usage(self, project: str) -> Usage:
        total: Usage = {}
        for fn in self._fns:
            for k, v in fn(project).items():
                total[k] = total.get(k, 0) + v
        return total
