"""What a desktop VM's life owes to its pool: it is deleted through the pool only, and
`kasou vm show` names its pool and user."""

from __future__ import annotations

from typing import Any

from kasou.engine.runtime import Runtime
from kasou.errors import Conflict
from kasou.service.hooks import VMHook
from kasou.store.base import VMRecord
from kasou.store.desktop import DesktopStore


class DesktopHook(VMHook):
    name = "desktop"

    def __init__(self, store: DesktopStore) -> None:
        self.store = store
        self.releasing: set[str] = set()    # VM ids the pool service is deleting itself

    async def deleted(self, rec: VMRecord) -> None:
        # First in the hook list: a refusal here comes before any area lets go of anything.
        if rec.id in self.releasing or self.store.desktop_of_vm(rec.id) is None:
            return
        raise Conflict(f"VM {rec.name} is a desktop of a pool: resize or delete the pool "
                       "(`kasou desktop-pool`) instead", field="name")

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        row = self.store.desktop_of_vm(rec.id)
        if row is None:
            return {}
        pool = next((p.name for p in self.store.pools(rec.project) if p.id == row.pool_id), None)
        return {"pool": pool, "index": row.idx, "user": row.user}
