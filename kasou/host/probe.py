"""What this host can run: accelerator, QEMU capabilities, TSC frequency, cgroups, size.

The decisions are pure functions over text and facts (tested as tables); the few functions
that touch the system only gather that text. The expensive answers (accelerator, QEMU's
machine list, TSC frequency) are cached on disk, keyed so that a QEMU upgrade, a reboot or a
change to /dev/kvm's permissions invalidates them: libvirt was measured spending ≈ 44 s per
VM start here re-probing a /dev/kvm it could not open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from kasou.errors import EngineError

__all__ = [
    "AccelChoice",
    "CgroupVersion",
    "HostInfo",
    "MachineType",
    "QemuCaps",
    "choose_accelerator",
    "cpu_flags",
    "decide_accelerator",
    "host_info",
    "host_tsc_khz",
    "kvm_status",
    "parse_cgroup_version",
    "parse_cpuinfo_mhz_khz",
    "parse_kernel_log_tsc_khz",
    "parse_meminfo_mib",
    "parse_qmp_replies",
    "qemu_capabilities",
]

AccelName = Literal["kvm", "tcg"]
CgroupVersion = Literal["v1", "v2", "hybrid", "none"]

KVM_GET_API_VERSION = 0xAE00   # _IO(KVMIO=0xAE, 0x00)
KVM_API_VERSION = 12           # the only stable KVM API there has ever been
CACHE_FILE = "host-probe.json"
CACHE_FORMAT = 1


# --- accelerator -------------------------------------------------------------------------

@dataclass(frozen=True)
class AccelChoice:
    name: AccelName
    reason: str


def decide_accelerator(kvm_usable: bool, kvm_error: str | None,
                       cpu_flags: set[str]) -> AccelChoice:
    """KVM only when /dev/kvm works AND the CPU shows hardware virtualization.

    A /dev/kvm without vmx/svm is nested or PVM-backed KVM: it opens, but a stock guest
    kernel's ring-0 code then runs in KVM's instruction emulator (thousands of times
    slower) and dies on cmpxchg16b/xrstor, so TCG is the faster and correct choice.
    """
    hw = sorted(cpu_flags & {"vmx", "svm"})
    if kvm_usable and hw:
        return AccelChoice("kvm", f"KVM: /dev/kvm opens (API {KVM_API_VERSION}) and the CPU "
                                  f"has the {hw[0]} flag")
    if kvm_usable:
        return AccelChoice("tcg", "TCG: /dev/kvm opens but the CPU has no vmx/svm flag "
                                  "(nested or PVM-backed KVM cannot run stock guest kernels)")
    why = kvm_error or "unknown error"
    if hw:
        return AccelChoice("tcg", f"TCG: the CPU has the {hw[0]} flag but /dev/kvm is not "
                                  f"usable ({why})")
    return AccelChoice("tcg", f"TCG: /dev/kvm is not usable ({why}) and the CPU has no "
                              "vmx/svm flag")


def kvm_status(kvm_path: str = "/dev/kvm") -> tuple[bool, str | None]:
    """(usable, why not): opens read-write and speaks KVM API 12."""
    try:
        fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return False, f"cannot open {kvm_path}: {err.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as err:
        return False, f"{kvm_path} does not answer KVM_GET_API_VERSION: {err.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{kvm_path} speaks KVM API {version}, not {KVM_API_VERSION}"
    return True, None


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first processor's flags: hosts do not mix CPUs with and without vmx/svm."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def choose_accelerator(kvm_path: str = "/dev/kvm",
                       cpuinfo_path: str = "/proc/cpuinfo") -> AccelChoice:
    usable, error = kvm_status(kvm_path)
    return decide_accelerator(usable, error, cpu_flags(_read(cpuinfo_path)))


# --- TSC frequency -----------------------------------------------------------------------

_REFINED = re.compile(r"tsc: Refined TSC clocksource calibration: (\d+(?:\.\d+)?) MHz")
_DETECTED = re.compile(r"tsc: Detected (\d+(?:\.\d+)?) MHz")
_CPU_MHZ = re.compile(r"^cpu MHz\s*:\s*(\d+(?:\.\d+)?)\s*$", re.MULTILINE)


def _mhz_to_khz(mhz: str) -> int:
    return round(float(mhz) * 1000)


def parse_kernel_log_tsc_khz(log: str) -> int | None:
    """The refined calibration when the kernel made one (it is the more precise number),
    else the frequency detected at boot."""
    for pattern in (_REFINED, _DETECTED):
        found = pattern.findall(log)
        if found:
            return _mhz_to_khz(found[-1])
    return None


def parse_cpuinfo_mhz_khz(cpuinfo: str) -> int | None:
    """Last resort: 'cpu MHz' is the current clock, equal to the TSC's only on hosts
    without frequency scaling (typical of VMs, where kasou most needs this)."""
    found = _CPU_MHZ.search(cpuinfo)
    return _mhz_to_khz(found.group(1)) if found else None


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def host_tsc_khz() -> int | None:
    sysfs = _parse_int(_read("/sys/devices/system/cpu/cpu0/tsc_freq_khz"))
    if sysfs:
        return sysfs
    from_log = parse_kernel_log_tsc_khz(_kernel_log())
    if from_log:
        return from_log
    return parse_cpuinfo_mhz_khz(_read("/proc/cpuinfo"))


def _kernel_log() -> str:
    text = "".join(_kmsg_records())
    if text:
        return text
    try:   # /dev/kmsg refused (container, no CAP_SYSLOG): dmesg may still be allowed
        run = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return run.stdout


def _kmsg_records() -> Iterator[str]:
    """Every record still in the kernel ring buffer, without blocking for new ones."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:   # overwritten while we read: skip to the next one
                continue
            _, _, message = record.decode(errors="replace").partition(";")
            yield message
    finally:
        os.close(fd)


# --- QEMU capabilities -------------------------------------------------------------------

class MachineType(BaseModel):
    name: str
    cpu_max: int
    alias: str | None = None
    is_default: bool = False
    deprecated: bool = False


class QemuCaps(BaseModel):
    binary: str
    version: str                          # "7.2.22"
    package: str = ""                     # distribution build, e.g. "Debian 1:7.2+dfsg-7"
    machines: dict[str, MachineType]

    def resolve(self, machine: str) -> str:
        """The versioned machine type behind an alias ('pc' -> 'pc-i440fx-7.2')."""
        for entry in self.machines.values():
            if entry.alias == machine:
                return entry.name
        return machine


_QMP_SCRIPT = ("qmp_capabilities", "query-version", "query-machines", "quit")


def parse_qmp_replies(lines: Iterable[str]) -> dict[int, Any]:
    """Replies by the id we gave each command; events and the greeting are skipped."""
    replies: dict[int, Any] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        if "id" not in message:
            continue
        if "error" in message:
            error = message["error"]
            raise EngineError(f"QMP command #{message['id']} failed: {error.get('desc', error)}")
        replies[int(message["id"])] = message.get("return")
    return replies


def _caps_from_replies(binary: str, replies: dict[int, Any]) -> QemuCaps:
    version = replies.get(_QMP_SCRIPT.index("query-version"))
    machines = replies.get(_QMP_SCRIPT.index("query-machines"))
    if not isinstance(version, dict) or not isinstance(machines, list):
        raise EngineError(f"{binary} did not answer query-version and query-machines")
    qemu = version["qemu"]
    return QemuCaps(
        binary=binary,
        version=f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}",
        package=version.get("package", "").strip(),
        machines={m["name"]: MachineType(
            name=m["name"], cpu_max=m["cpu-max"], alias=m.get("alias"),
            is_default=m.get("is-default", False), deprecated=m.get("deprecated", False),
        ) for m in machines},
    )


def qemu_capabilities(binary: str = "qemu-system-x86_64") -> QemuCaps:
    """One short QEMU run (≈ 50 ms) answering version and machine types over QMP on stdio."""
    script = "".join(json.dumps({"execute": cmd, "id": i}) + "\n"
                     for i, cmd in enumerate(_QMP_SCRIPT))
    argv = [binary, "-machine", "none", "-nodefaults", "-no-user-config",
            "-display", "none", "-qmp", "stdio"]
    try:
        run = subprocess.run(argv, input=script, capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EngineError(f"cannot run {binary} to probe it: {err}") from err
    if run.returncode != 0:
        raise EngineError(f"{binary} exited with {run.returncode} while probed: "
                          f"{run.stderr.strip()}")
    return _caps_from_replies(binary, parse_qmp_replies(run.stdout.splitlines()))


# --- small host facts --------------------------------------------------------------------

def parse_meminfo_mib(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise EngineError("MemTotal missing from /proc/meminfo")


def parse_cgroup_version(mounts: str) -> CgroupVersion:
    """From /proc/self/mounts: cgroup2 at /sys/fs/cgroup is v2; v1 hierarchies with a
    cgroup2 tree beside them (systemd's 'unified') is hybrid."""
    v1 = v2_root = v2_elsewhere = False
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = fields[1], fields[2]
        if fstype == "cgroup":
            v1 = True
        elif fstype == "cgroup2":
            v2_root = v2_root or point == "/sys/fs/cgroup"
            v2_elsewhere = v2_elsewhere or point != "/sys/fs/cgroup"
    if v2_root and not v1:
        return "v2"
    if v1:
        return "hybrid" if v2_elsewhere or v2_root else "v1"
    return "v2" if v2_elsewhere else "none"


def _cores() -> int:
    # The affinity mask, not the machine's count: kasou may itself be pinned (cpuset).
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


# --- the whole picture, cached -----------------------------------------------------------

class HostInfo(BaseModel):
    cores: int
    memory_mib: int
    qemu_binary: str
    qemu_version: str
    machines: dict[str, int]             # machine type (and alias) -> cpu-max
    accelerator: AccelName
    accelerator_reason: str
    tsc_khz: int | None
    cgroup_version: CgroupVersion
    kernel_release: str


class _Probed(BaseModel):
    """The expensive part of HostInfo, as stored in the cache file."""

    key: dict[str, str]
    accelerator: AccelName
    accelerator_reason: str
    tsc_khz: int | None
    qemu: QemuCaps


def _cache_key(binary: str, kvm_path: str) -> dict[str, str]:
    """What the expensive answers depend on. /dev/kvm's owner and mode are in it because
    the usual fix for 'cannot open /dev/kvm' is a chmod or a group, not a reboot."""
    path = shutil.which(binary) or binary
    try:
        qemu = f"{os.path.realpath(path)}@{os.stat(path).st_mtime_ns}"
    except OSError:
        qemu = f"{path}@missing"
    try:
        st = os.stat(kvm_path)
        kvm = f"{st.st_mode:o}:{st.st_uid}:{st.st_gid}:{os.geteuid()}:{sorted(os.getgroups())}"
    except OSError:
        kvm = "missing"
    boot_id = _read("/proc/sys/kernel/random/boot_id").strip()
    return {"format": str(CACHE_FORMAT), "qemu": qemu, "boot_id": boot_id, "kvm": kvm}


def _probe_expensive(binary: str, key: dict[str, str], kvm_path: str) -> _Probed:
    accel = choose_accelerator(kvm_path)
    return _Probed(key=key, accelerator=accel.name, accelerator_reason=accel.reason,
                   tsc_khz=host_tsc_khz(), qemu=qemu_capabilities(binary))


def _load_cached(path: Path, key: dict[str, str]) -> _Probed | None:
    with contextlib.suppress(OSError, ValueError, ValidationError):
        cached = _Probed.model_validate_json(path.read_text())
        if cached.key == key:
            return cached
    return None


def _store_cached(path: Path, probed: _Probed) -> None:
    # Write-then-rename: two kasou processes probing at once never read half a file.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(probed.model_dump_json(indent=2))
        tmp.replace(path)


def _probe_cached(cache_dir: Path | None, binary: str = "qemu-system-x86_64",
                    kvm_path: str = "/dev/kvm") -> _Probed:
    key = _cache_key(binary, kvm_path)
    path = cache_dir / CACHE_FILE if cache_dir else None
    cached = _load_cached(path, key) if path else None
    if cached:
        return cached
    probed = _probe_expensive(binary, key, kvm_path)
    if path:
        _store_cached(path, probed)
    return probed


def _machine_cpu_max(caps: QemuCaps) -> dict[str, int]:
    out = {name: m.cpu_max for name, m in caps.machines.items()}
    out.update({m.alias: m.cpu_max for m in caps.machines.values() if m.alias})
    return dict(sorted(out.items()))


def host_info(cache_dir: Path | None = None, binary: str = "qemu-system-x86_64",
              kvm_path: str = "/dev/kvm") -> HostInfo:
    """Everything `kasou host info` shows. With a cache_dir the expensive part is probed
    once per (QEMU build, boot, /dev/kvm permissions); without one it is probed now."""
    probed = _probe_cached(cache_dir, binary, kvm_path)
    return HostInfo(
        cores=_cores(),
        memory_mib=parse_meminfo_mib(_read("/proc/meminfo")),
        qemu_binary=probed.qemu.binary,
        qemu_version=probed.qemu.version,
        machines=_machine_cpu_max(probed.qemu),
        accelerator=probed.accelerator,
        accelerator_reason=probed.accelerator_reason,
        tsc_khz=probed.tsc_khz,
        cgroup_version=parse_cgroup_version(_read("/proc/self/mounts")),
        kernel_release=os.uname().release,
    )
