"""From a stored spec to a launch plan: images looked up, files checked, host facts added.

This is where host-dependent values (accelerator, TSC frequency, disk formats) enter;
the argv builders stay pure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kasou.engine.plan import DiskPlan, LaunchPlan, Machine, RunPaths
from kasou.errors import InvalidSpec
from kasou.host.probe import HostInfo
from kasou.images import overlay
from kasou.images.manifest import ImageManifest
from kasou.images.registry import get_image
from kasou.spec import VMSpec

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class Resolved:
    plan: LaunchPlan
    image: ImageManifest | None
    graceful_stop: bool


def machine_for(spec: VMSpec, image: ImageManifest | None) -> Machine:
    if spec.machine:
        return spec.machine
    if spec.display:        # a screen needs a VGA device; microvm has none
        return "pc"
    if image is not None:
        return image.machine
    if spec.kernel:
        return "microvm"
    return "pc"


def image_of(spec: VMSpec, images_root: Path | None = None) -> ImageManifest | None:
    if spec.image is None:
        return None
    try:
        return get_image(spec.image, images_root)
    except Exception as e:  # NotFound names the images that exist
        raise InvalidSpec(f"image: {getattr(e, 'message', e)}", field="image") from None


def check_files(spec: VMSpec) -> None:
    for field, path in (("kernel", spec.kernel), ("initrd", spec.initrd), ("iso", spec.iso)):
        if path is not None:
            _check_file(field, path)
    for i, path in enumerate(spec.disks):
        _check_file(f"disks.{i}", path)


def _check_file(field: str, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InvalidSpec(f"{field}: {path} does not exist", field=field)
    if not p.is_file() and not p.is_block_device():
        raise InvalidSpec(f"{field}: {path} is not a file", field=field)


def check_against_host(spec: VMSpec, machine: Machine, host: HostInfo,
                       image: ImageManifest | None) -> None:
    cpu_max = host.machines.get(machine)
    if cpu_max and spec.vcpus > cpu_max:
        raise InvalidSpec(f"vcpus: {spec.vcpus} is more than machine {machine} allows under "
                          f"{host.accelerator} ({cpu_max})", field="vcpus")
    if image is not None and spec.memory < image.min_memory_mib:
        raise InvalidSpec(f"memory: image {image.name} needs at least {image.min_memory_mib} MiB",
                          field="memory")


def disk_format(path: str) -> str:
    """Ask qemu-img; never let QEMU guess a format (a raw disk could pose as qcow2)."""
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise InvalidSpec(f"disk {path}: not a disk image qemu-img can read: "
                          f"{e.stderr.strip()}", field="disks") from None
    fmt = str(json.loads(out).get("format", "raw"))
    if fmt not in ("qcow2", "raw"):
        raise InvalidSpec(f"disk {path}: format {fmt} is not supported (qcow2 or raw)",
                          field="disks")
    return fmt


def kernel_cmdline(spec: VMSpec, image: ImageManifest | None) -> str | None:
    base = spec.cmdline if spec.cmdline is not None else (image.cmdline if image else None)
    if image is not None and image.kernel:
        # tty0 first: the kernel writes to both, and the last console (serial) stays
        # /dev/console, where the guest says READY.
        screen = "console=tty0 " if spec.display else ""
        return f"{screen}{base or ''} kasou.hostname={spec.name}".strip()
    return base


def resolve(vm_id: str, spec: VMSpec, run_dir: Path, host: HostInfo,
            images_root: Path | None = None) -> Resolved:
    image = image_of(spec, images_root)
    machine = machine_for(spec, image)
    check_files(spec)
    check_against_host(spec, machine, host, image)
    disks = [DiskPlan(path=d, format=disk_format(d)) for d in spec.disks]  # type: ignore[arg-type]
    # A VM cloned from a template boots its own copy (added by storage), not the image's.
    # The image's own disk is only ever the backing file of the VM's overlay.
    if image is not None and overlay.uses_image_disk(spec, image):
        root = overlay.require_overlay(run_dir, spec.name, image)
        disks.insert(0, DiskPlan(path=str(root)))
    if spec.iso:
        disks.append(DiskPlan(path=spec.iso, format="raw", readonly=True, media="cdrom"))
    firmware = spec.firmware or (image.firmware if image else "bios")
    plan = LaunchPlan(
        vm_id=vm_id, name=spec.name, machine=machine, accel=host.accelerator,
        vcpus=spec.vcpus, memory_mib=spec.memory, paths=run_paths(run_dir),
        kernel=spec.kernel or (image.kernel if image else None),
        initrd=spec.initrd or (image.initrd if image and not spec.kernel else None),
        cmdline=kernel_cmdline(spec, image), disks=tuple(disks),
        firmware="none" if machine == "microvm" else firmware,
        ovmf_code=OVMF_CODE if firmware == "uefi" else None,
        ovmf_vars=str(run_dir / "OVMF_VARS.fd") if firmware == "uefi" else None,
        display=spec.display, tsc_khz=host.tsc_khz,
    )
    graceful = image.graceful_stop if image is not None else True
    return Resolved(plan=plan, image=image, graceful_stop=graceful)


def prepare_firmware(plan: LaunchPlan) -> None:
    """A per-VM writable copy of the UEFI variable store, made once."""
    if plan.ovmf_vars and not Path(plan.ovmf_vars).exists():
        shutil.copyfile(OVMF_VARS, plan.ovmf_vars)


def run_paths(run_dir: Path) -> RunPaths:
    return RunPaths(qmp=str(run_dir / "qmp.sock"), console=str(run_dir / "console.sock"),
                    serial_log=str(run_dir / "serial.log"), pidfile=str(run_dir / "pid"),
                    agent=str(run_dir / "qga.sock"))
