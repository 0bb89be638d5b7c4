"""The cloud-init part of a VM's life (a VMHook):

- validate: user-data, keys or a host name for an image that has no cloud-init (tiny,
            memtest) are refused rather than silently ignored
- created:  the VM's seed ISO is written once into its run dir (it goes with the run dir)
- plan:     the seed is attached as a read-only CD-ROM (a read-only virtio disk on microvm)
- prepare:  the seed is written again if it went missing

A VM gets a seed when its image reads one (manifest `cloud_init`) or when the user gave
any cloud-init input (their own cloud image given with --disk or --from).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from kasou.cloudinit.seed import SEED_FILE, SeedData, write_seed
from kasou.cloudinit.userdata import hostname_for
from kasou.engine.plan import DiskPlan, LaunchPlan
from kasou.engine.runtime import Runtime
from kasou.errors import InvalidSpec, KasouError
from kasou.images.manifest import ImageManifest
from kasou.paths import Layout
from kasou.service import resolve as rs
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.spec import VMSpec
from kasou.store.base import VMRecord, batch_memo


def user_input(spec: VMSpec) -> str | None:
    """The first cloud-init field the user set, if any."""
    for field in ("user_data", "ssh_keys", "hostname"):
        if getattr(spec, field):
            return field
    return None


def wants_seed(spec: VMSpec, image: ImageManifest | None) -> bool:
    return bool((image is not None and image.cloud_init) or user_input(spec))


def seed_data(rec: VMRecord) -> SeedData:
    spec = rec.spec
    return SeedData(instance_id=f"iid-{rec.id}",
                    hostname=spec.hostname or hostname_for(spec.name),
                    user_data=spec.user_data, ssh_keys=tuple(spec.ssh_keys))


class CloudInitHook(VMHook):
    name = "cloud_init"

    def __init__(self, layout: Layout, images_root: Path | None = None) -> None:
        self.layout = layout
        self.images_root = images_root

    def _image(self, spec: VMSpec) -> ImageManifest | None:
        try:
            return rs.image_of(spec, self.images_root)
        except KasouError:
            return None   # the VM service reports a missing image itself

    def _seed(self, rec: VMRecord) -> Path:
        return self.layout.vm_dir(rec.id) / SEED_FILE

    def validate(self, rec: VMRecord) -> None:
        field = user_input(rec.spec)
        image = self._image(rec.spec)
        own_disk = rec.spec.disks or rec.spec.template or rec.spec.volumes
        if field and image is not None and not image.cloud_init and not own_disk:
            raise InvalidSpec(f"{field}: image {image.name!r} has no cloud-init, so it would "
                              "be ignored; use an image that has it (debian)", field=field)

    async def created(self, rec: VMRecord, revert: Reverter) -> None:
        if wants_seed(rec.spec, self._image(rec.spec)):
            await asyncio.to_thread(write_seed, seed_data(rec), self._seed(rec))

    def plan(self, rec: VMRecord, plan: LaunchPlan) -> LaunchPlan:
        if not wants_seed(rec.spec, self._image(rec.spec)):
            return plan
        seed = DiskPlan(path=str(self._seed(rec)), format="raw", readonly=True, media="cdrom")
        return dataclasses.replace(plan, disks=(*plan.disks, seed))

    async def prepare(self, rec: VMRecord, plan: LaunchPlan, revert: Reverter) -> None:
        seed = self._seed(rec)
        if any(d.path == str(seed) for d in plan.disks) and not seed.is_file():
            await asyncio.to_thread(write_seed, seed_data(rec), seed)

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        # Once per image in a VM list (the manifest is read from disk).
        image = batch_memo(("image", rec.spec.image, self.images_root),
                           lambda: self._image(rec.spec))
        if not wants_seed(rec.spec, image):
            return {}
        data = seed_data(rec)
        return {"instance_id": data.instance_id, "hostname": data.hostname,
                "user_data": rec.spec.user_data is not None,
                "ssh_keys": len(rec.spec.ssh_keys)}
