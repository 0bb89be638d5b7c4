"""The image-disk part of a VM's life (a VMHook): a VM of an image that has a disk
(debian) gets its own qcow2 overlay on it when it is created; the overlay lives in the
VM's run dir and goes with it. The image's disk itself is never written (overlay.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kasou.engine.runtime import Runtime
from kasou.errors import KasouError
from kasou.images import overlay
from kasou.images.manifest import ImageManifest
from kasou.paths import Layout
from kasou.service import resolve as rs
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.spec import VMSpec
from kasou.store.base import VMRecord, batch_memo


class ImageDiskHook(VMHook):
    name = "image_disk"

    def __init__(self, layout: Layout, images_root: Path | None = None) -> None:
        self.layout = layout
        self.images_root = images_root

    def _image(self, spec: VMSpec) -> ImageManifest | None:
        try:
            return rs.image_of(spec, self.images_root)
        except KasouError:
            return None

    async def created(self, rec: VMRecord, revert: Reverter) -> None:
        image = self._image(rec.spec)
        if image is None or image.disk is None or not overlay.uses_image_disk(rec.spec, image):
            return
        dest = overlay.overlay_path(self.layout.vm_dir(rec.id))
        await asyncio.to_thread(overlay.create_overlay, image.disk, dest, image.built_at)
        revert.add(lambda: dest.unlink(missing_ok=True))

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        # Once per image in a VM list (the manifest is read from disk).
        image = batch_memo(("image", rec.spec.image, self.images_root),
                           lambda: self._image(rec.spec))
        if image is None or image.disk is None or not overlay.uses_image_disk(rec.spec, image):
            return {}
        return {"overlay": str(overlay.overlay_path(self.layout.vm_dir(rec.id))),
                "backing": image.disk}
