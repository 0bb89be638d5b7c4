"""qemu-img, asynchronously, reading its JSON output (never its human text).

Every call names the format explicitly once it is known (`-f`), so a raw image whose
first bytes look like a qcow2 header is never taken for one. Reads of images that a
running QEMU holds use `-U` (no lock); writes never do.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kasou.errors import EngineError

QEMU_IMG = "qemu-img"
TIMEOUT = 60.0
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(EngineError):
    """qemu-img exited non-zero; `detail` is its stderr."""

    code = "storage"

    def __init__(self, message: str, detail: str, returncode: int | None) -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.detail = detail
        self.returncode = returncode


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    name: str
    vm_state_size: int
    date_sec: int


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing: str | None
    backing_format: str | None
    snapshots: tuple[SnapshotInfo, ...]
    corrupt: bool
    extents: tuple[str, ...]        # vmdk: files the image reads from

    def snapshot_names(self) -> set[str]:
        return {s.name for s in self.snapshots}


@dataclass(frozen=True)
class CheckResult:
    corruptions: int
    leaks: int
    check_errors: int
    image_end_offset: int | None

    @property
    def damaged(self) -> bool:
        return self.corruptions > 0 or self.check_errors > 0


async def _run(args: list[str], what: str, *, ok_codes: tuple[int, ...] = (0,),
               timeout: float = TIMEOUT) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            QEMU_IMG, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        raise QemuImgError(f"cannot run {QEMU_IMG} to {what}", e.strerror or "", None) from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise QemuImgError(f"{QEMU_IMG} took over {timeout:.0f}s to {what}", "", None) from None
    if proc.returncode not in ok_codes:
        raise QemuImgError(f"cannot {what}", _first_lines(err), proc.returncode)
    return out.decode(errors="replace")


def _first_lines(raw: bytes, n: int = 3) -> str:
    lines = [ln.strip() for ln in raw.decode(errors="replace").splitlines() if ln.strip()]
    return "; ".join(ln.removeprefix("qemu-img: ") for ln in lines[:n])


def _fmt(fmt: str | None) -> list[str]:
    return ["-f", fmt] if fmt else []


async def info(path: str, fmt: str | None = None) -> ImageInfo:
    out = await _run(["info", "--output=json", "-U", *_fmt(fmt), path], f"read {path}")
    return parse_info(json.loads(out))


def parse_info(data: dict[str, Any]) -> ImageInfo:
    specific = (data.get("format-specific") or {}).get("data") or {}
    snaps = tuple(SnapshotInfo(id=str(s.get("id", "")), name=str(s.get("name", "")),
                               vm_state_size=int(s.get("vm-state-size", 0)),
                               date_sec=int(s.get("date-sec", 0)))
                  for s in data.get("snapshots", []))
    extents = tuple(str(e.get("filename", "")) for e in specific.get("extents", []))
    return ImageInfo(format=str(data["format"]), virtual_size=int(data["virtual-size"]),
                     actual_size=int(data.get("actual-size", 0)),
                     backing=data.get("backing-filename"),
                     backing_format=data.get("backing-filename-format"),
                     snapshots=snaps, corrupt=bool(specific.get("corrupt", False)),
                     extents=extents)


async def check(path: str, fmt: str) -> CheckResult:
    # Exit codes: 0 clean, 2 corruptions, 3 leaks only; 1 means check itself failed.
    out = await _run(["check", "--output=json", *_fmt(fmt), path], f"check {path}",
                     ok_codes=(0, 2, 3), timeout=600)
    return parse_check(json.loads(out))


def parse_check(data: dict[str, Any]) -> CheckResult:
    return CheckResult(corruptions=int(data.get("corruptions", 0)),
                       leaks=int(data.get("leaks", 0)),
                       check_errors=int(data.get("check-errors", 0)),
                       image_end_offset=data.get("image-end-offset"))


async def create(path: str, fmt: str, size: int | None = None, *,
                 backing: str | None = None, backing_fmt: str | None = None) -> None:
    args = ["create", "-q", "-f", fmt]
    if backing:
        args += ["-b", backing, "-F", backing_fmt or "qcow2"]
    if fmt == "qcow2":
        # Preallocated metadata would cost seconds on big disks; lazy refcounts are
        # only safe with a clean shutdown, so both stay at their defaults.
        args += ["-o", "cluster_size=65536"]
    args.append(path)
    if size is not None:
        args.append(str(size))
    await _run(args, f"create {path}")


async def convert(src: str, src_fmt: str, dst: str, dst_fmt: str,
                  progress: Callable[[float], None] | None = None,
                  timeout: float = 6 * 3600) -> None:
    """Copy src into a new standalone image dst (sparse, no backing file)."""
    args = ["convert", "-f", src_fmt, "-O", dst_fmt, "-p", src, dst]
    if progress is None:
        await _run(args, f"convert {src}", timeout=timeout)
        return
    await _run_with_progress(args, f"convert {src}", progress, timeout)


async def _run_with_progress(args: list[str], what: str, progress: Callable[[float], None],
                             timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        QEMU_IMG, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(4096):
            # -p redraws "(12.34/100%)" with carriage returns; the last one counts.
            found = _PROGRESS.findall(chunk)
            if found:
                progress(float(found[-1]) / 100)

    try:
        err = (await asyncio.wait_for(asyncio.gather(pump(), proc.stderr.read()), timeout))[1]
        await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise QemuImgError(f"{QEMU_IMG} took over {timeout:.0f}s to {what}", "", None) from None
    if proc.returncode != 0:
        raise QemuImgError(f"cannot {what}", _first_lines(err), proc.returncode)


async def resize(path: str, fmt: str, size: int, *, shrink: bool = False) -> None:
    args = ["resize", "-q", *_fmt(fmt)]
    if shrink:
        args.append("--shrink")
    await _run([*args, path, str(size)], f"resize {path}")


def qcow2_opts(path: str) -> str:
    """`qemu-img snapshot` has no -f: name the format through --image-opts instead of
    letting it probe."""
    return f"driver=qcow2,file.driver=file,file.filename={path.replace(',', ',,')}"


async def _snapshot(op: str, tag: str, path: str, what: str) -> None:
    await _run(["snapshot", "-q", op, tag, "--image-opts", qcow2_opts(path)], what)


async def snapshot_create(path: str, tag: str) -> None:
    await _snapshot("-c", tag, path, f"take snapshot {tag!r} of {path}")


async def snapshot_apply(path: str, tag: str) -> None:
    await _snapshot("-a", tag, path, f"revert {path} to snapshot {tag!r}")


async def snapshot_delete(path: str, tag: str) -> None:
    await _snapshot("-d", tag, path, f"delete snapshot {tag!r} of {path}")
