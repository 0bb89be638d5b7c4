"""Importing a volume from an http(s) URL or a file on the host.

    reserve the name (row `importing`) -> download / hash -> probe -> copy or convert
    into <pool>/<project>/<name>.<fmt> -> row `ready`

Probing refuses what is not a disk image: formats kasou does not take, images with a
backing file (it would make QEMU read another host file), vmdk extents elsewhere, qcow2
that `qemu-img check` finds damaged (a truncated download), and "raw" files with no
partition table, file system or ISO 9660 header. Any failure leaves no row and no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from kasou.errors import Forbidden, InvalidSpec
from kasou.names import Name
from kasou.service.revert import Reverter
from kasou.storage import fetch, qemu_img, sniff
from kasou.storage.core import StorageCore
from kasou.storage.models import Format, Progress, Volume
from kasou.storage.qemu_img import QemuImgError
from kasou.storage.views import VolumeView
from kasou.storage.volumes import TEMPLATE_MODE, VOLUME_MODE, new_volume, progress_into

SOURCE_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc")
CHECKABLE = ("qcow2", "vmdk", "vdi", "vhdx")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    source: str                     # http(s) URL, or an absolute path on the daemon's host
    sha256: str | None = None
    format: Format | None = None    # default: qcow2 stays qcow2, raw stays raw, others qcow2
    pool: str | None = None
    template: bool = False


    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        try:
            return fetch.check_sha256(v)
        except InvalidSpec as e:
            raise ValueError(e.message.removeprefix("sha256: ")) from None

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not (fetch.is_url(v) or v.startswith("/")):
            raise ValueError("must be an http(s) URL or an absolute path on the host")
        return v


@dataclass(frozen=True)
class Probed:
    format: str
    virtual_size: int


async def probe(path: Path, label: str) -> Probed:
    """What the file is, or InvalidSpec(field=source) saying why it is not a disk image."""
    try:
        info = await qemu_img.info(str(path))
    except QemuImgError as e:
        raise _bad(f"{label} is not a disk image qemu-img can read ({e.detail})") from None
    if info.format not in SOURCE_FORMATS:
        raise _bad(f"{label} is a {info.format} image; kasou imports "
                   f"{', '.join(SOURCE_FORMATS)}")
    if info.backing:
        raise _bad(f"{label} has a backing file ({info.backing}); import a standalone image "
                   "(`qemu-img convert` flattens it)")
    if any(Path(e).resolve() != path.resolve() for e in info.extents):
        raise _bad(f"{label} reads extents from other files; import a single-file image")
    if info.format == "raw":
        if sniff.disk_kind(path) is None:
            raise _bad(f"{label} does not look like a disk image: no partition table, file "
                       "system or ISO 9660 header (for an empty disk use `kasou volume "
                       "create`)")
    elif info.format in CHECKABLE:
        await _check(path, info.format, label)
    return Probed(format=info.format, virtual_size=info.virtual_size)


async def _check(path: Path, fmt: str, label: str) -> None:
    try:
        result = await qemu_img.check(str(path), fmt)
    except QemuImgError as e:
        raise _bad(f"{label} is a damaged {fmt} image ({e.detail})") from None
    if result.damaged:
        raise _bad(f"{label} is a damaged or truncated {fmt} image: qemu-img check found "
                   f"{result.corruptions} corruption(s) and {result.check_errors} error(s)")


def _bad(reason: str) -> InvalidSpec:
    return InvalidSpec(f"source: {reason}", field="source")


class Importer:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    async def run(self, req: ImportRequest, project: str, *, host_files: bool) -> VolumeView:
        local = None if fetch.is_url(req.source) else self._local(req.source, host_files)
        pool = self.core.pool_of(req.pool)
        # Hidden, and named after the reserved volume name, so it cannot clash.
        staging = self.core.project_dir(pool, project) / f".{req.name}.import"
        vol = new_volume(pool, project, req.name, staging, "raw", 0, req.source)
        vol = vol.model_copy(update={"state": "importing"})
        self.store.add_volume(vol)
        try:
            async with Reverter() as revert:
                revert.add(lambda: self.store.delete_volume(vol.id))
                revert.add(lambda: _unlink(staging))
                src = await self._fetch(req, vol.id, staging, local)
                done = await self._materialize(req, vol, src, staging, revert)
                revert.success()
        finally:
            self.core.progress.pop(vol.id, None)
        return self.core.view(done)

    @staticmethod
    def _local(source: str, host_files: bool) -> Path:
        if not host_files:
            raise Forbidden("importing a file on the daemon's host needs an administrator; "
                            "import from an http(s) URL")
        path = Path(source)
        if not path.is_file():
            raise InvalidSpec(f"source: {source} is not a file on the host", field="source")
        return path

    async def _fetch(self, req: ImportRequest, vol_id: str, staging: Path,
                     local: Path | None) -> Path:
        def report(done: int, total: int | None) -> None:
            phase = "downloading" if local is None else "checking sha256"
            self.core.progress[vol_id] = Progress(phase=phase, done=done, total=total)

        if local is None:
            await asyncio.to_thread(fetch.download, req.source, staging, req.sha256, report)
            return staging
        if req.sha256:
            await asyncio.to_thread(fetch.hash_file, local, req.sha256, report)
        return local

    async def _materialize(self, req: ImportRequest, vol: Volume, src: Path, staging: Path,
                           revert: Reverter) -> Volume:
        label = req.source
        probed = await probe(src, label)
        target: Format = req.format or ("raw" if probed.format == "raw" else "qcow2")
        pool = self.store.pool_by_id(vol.pool_id)
        final = self.core.new_path(pool, vol.project, vol.name, target)
        revert.add(lambda: _unlink(final))
        if src == staging and probed.format == target:
            os.rename(staging, final)     # a download in the right format: no second copy
        else:
            await qemu_img.convert(str(src), probed.format, str(final), target,
                                   progress=progress_into(self.core, vol.id, "converting"))
            _unlink(staging)
        info = await qemu_img.info(str(final), target)
        os.chmod(final, TEMPLATE_MODE if req.template else VOLUME_MODE)
        done = vol.model_copy(update={"path": str(final), "format": target,
                                      "size": info.virtual_size, "state": "ready",
                                      "template": req.template})
        self.store.update_volume(done)
        return done

    def clean_unfinished(self) -> None:
        """After a daemon crash: drop imports/creates that never finished, with their
        files (their names were reserved, so no one else's file can be there)."""
        for vol in self.store.unfinished_volumes():
            path = Path(vol.path)
            for candidate in (path, path.parent / f"{vol.name}.qcow2",
                              path.parent / f"{vol.name}.raw"):
                if vol.state == "importing" or candidate == path:
                    _unlink(candidate)
            self.store.delete_volume(vol.id)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
