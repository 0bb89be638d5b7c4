"""A VM's own disk: a linked clone of a template (a qcow2 overlay whose backing file is
the template: instant, copy-on-write), a full copy of it, or a blank qcow2.

The template stays read-only (file mode 0444, opened read-only by QEMU through the
overlay's backing chain); a template with clones cannot be deleted or un-marked.
"""

from __future__ import annotations

from kasou.errors import Conflict, InvalidSpec
from kasou.storage import qemu_img
from kasou.storage.core import StorageCore
from kasou.storage.models import Volume
from kasou.storage.volumes import make, new_volume, progress_into
from kasou.units import format_size


def root_name(vm_name: str) -> str:
    return f"{vm_name}-disk"


def template_of(core: StorageCore, name: str, project: str) -> Volume:
    vol = core.store.volume(name, project)
    if not vol.template:
        raise InvalidSpec(f"template: volume {name!r} is not a template; mark it with "
                          f"`kasou volume template {name}`", field="template")
    if vol.state != "ready":
        raise Conflict(f"template {name!r} is still {vol.state}", field="template")
    return vol


def clone_size(template: Volume, disk_mib: int | None) -> int | None:
    if disk_mib is None:
        return None
    size = disk_mib << 20
    if size < template.size:
        raise InvalidSpec(f"disk_size: {format_size(size)} is smaller than template "
                          f"{template.name!r} ({format_size(template.size)})",
                          field="disk_size")
    return size


async def clone(core: StorageCore, template: Volume, name: str, vm_id: str, *,
                full: bool, size: int | None) -> Volume:
    pool = core.store.pool_by_id(template.pool_id)
    path = core.new_path(pool, template.project, name, "qcow2")
    kind = "full copy" if full else "linked clone"
    vol = new_volume(pool, template.project, name, path, "qcow2", size or template.size,
                     f"{kind} of template {template.name}", owner_vm=vm_id,
                     backing_id=None if full else template.id)

    async def build() -> None:
        if full:
            await qemu_img.convert(template.path, template.format, str(path), "qcow2",
                                   progress=progress_into(core, vol.id, "copying"))
            core.progress.pop(vol.id, None)
            if size:
                await qemu_img.resize(str(path), "qcow2", size)
        else:
            await qemu_img.create(str(path), "qcow2", size, backing=template.path,
                                  backing_fmt=template.format)

    async def reserve() -> None:
        # Under the template's lock, so a delete or un-mark of it sees this clone.
        async with core.vol_lock(template.id):
            template_of(core, template.name, template.project)
            core.store.add_volume(vol)

    return await make(core, vol, build, reserve)


async def blank(core: StorageCore, pool_name: str | None, name: str, project: str,
                vm_id: str, size: int) -> Volume:
    pool = core.pool_of(pool_name)
    path = core.new_path(pool, project, name, "qcow2")
    vol = new_volume(pool, project, name, path, "qcow2", size, "blank", owner_vm=vm_id)
    return await make(core, vol, lambda: qemu_img.create(str(path), "qcow2", size))
