"""Pure QEMU command-line builders: LaunchPlan -> argv.

Every builder takes the plan and returns a list of arguments; none reads the system, the
environment or the clock (Ganeti's rule for its KVM runtime), so the whole command line is
checked against golden files in tests/golden. Host-dependent facts (accelerator, TSC
frequency, OVMF paths) are resolved into the plan before it gets here.

Options seen to work with QEMU 7.2 on the project's hosts are noted where they are not the
obvious choice; see docs in DESIGN.md for the measurements behind the guest quirks.
"""

from __future__ import annotations

from collections.abc import Callable

from kasou.engine.plan import DiskPlan, LaunchPlan, NicPlan
from kasou.errors import InvalidSpec

__all__ = [
    "TCG_TB_SIZE_MIB",
    "accel_args",
    "agent_args",
    "balloon_args",
    "boot_args",
    "build_argv",
    "cpu_args",
    "daemon_args",
    "display_args",
    "drive_args",
    "firmware_args",
    "kernel_cmdline",
    "machine_args",
    "memory_args",
    "nic_args",
    "opts",
    "qemu_opt_escape",
    "qmp_args",
    "rng_args",
    "serial_args",
    "smp_args",
]

# TCG's translation cache defaults to 1 GiB in QEMU 7.2; only touched pages cost RSS, but they
# are never given back, so a long-lived busy guest creeps towards the cap. An idle tiny guest
# touched ≈ 42 MiB here, so 64 MiB leaves room for boot-time code without flushing while
# capping each VM's cost at a known number (host/capacity.py counts it in the overhead).
# Older QEMUs used 32 MiB for years; a flush only costs re-translating hot code.
TCG_TB_SIZE_MIB = 64

_PCI_MACHINES = ("pc", "q35")


def qemu_opt_escape(value: str) -> str:
    """Escape a value for QEMU's `key=value,key=value` syntax: a comma is written twice."""
    return value.replace(",", ",,")


def opts(head: str, **values: str | int | bool | None) -> str:
    """`head,key=value,...`, values escaped, None dropped, bools as on/off.

    Keys use '_' for '-' (Python names), except the ones QEMU spells with '_' itself,
    which callers pass through `_raw_opts`.
    """
    return _raw_opts(head, {k.replace("_", "-"): v for k, v in values.items()})


def _raw_opts(head: str, values: dict[str, str | int | bool | None]) -> str:
    parts = [head] if head else []
    for key, value in values.items():
        if value is None:
            continue
        parts.append(f"{key}={_opt_value(value)}")
    return ",".join(parts)


def _opt_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return qemu_opt_escape(str(value))


def _is_pci(plan: LaunchPlan) -> bool:
    return plan.machine in _PCI_MACHINES


def _virtio(plan: LaunchPlan, kind: str) -> str:
    """microvm has no PCI bus: its virtio devices sit on virtio-mmio transports."""
    return f"virtio-{kind}-pci" if _is_pci(plan) else f"virtio-{kind}-device"


def machine_args(plan: LaunchPlan) -> list[str]:
    if plan.machine == "microvm":
        # ACPI stays on: without it the guest cannot see the power button and a graceful
        # stop only halts it. No PIT/PIC: the guest uses the LAPIC timer and the TSC
        # (calibrated through tsc_early_khz), and legacy timers only cost TCG wakeups.
        return ["-machine", opts("microvm", acpi="on", x_option_roms=False, pit="off",
                                 pic="off", rtc="on", dump_guest_core=False)]
    # vmport and USB are never used by a server guest and only add emulated devices;
    # guest RAM in a core dump of QEMU would be both huge and a tenant's data.
    return ["-machine", opts(plan.machine, usb=False, vmport="off", dump_guest_core=False)]


def accel_args(plan: LaunchPlan) -> list[str]:
    if plan.accel == "kvm":
        return ["-accel", "kvm"]
    return ["-accel", opts("tcg", thread="multi", tb_size=TCG_TB_SIZE_MIB)]


def cpu_args(plan: LaunchPlan) -> list[str]:
    if plan.accel == "kvm":
        return ["-cpu", "host"]
    # +arat (an always-running APIC timer) lets an idle guest stop its 250 Hz tick:
    # idle CPU measured ≈ 3% -> ≈ 0.7% of a core under TCG.
    return ["-cpu", "qemu64,+arat"]


def memory_args(plan: LaunchPlan) -> list[str]:
    if plan.memory_mib < 1:
        raise InvalidSpec(f"memory must be at least 1 MiB, got {plan.memory_mib}",
                          field="memory_mib")
    return ["-m", f"{plan.memory_mib}M"]


def smp_args(plan: LaunchPlan) -> list[str]:
    if plan.vcpus < 1:
        raise InvalidSpec(f"vcpus must be at least 1, got {plan.vcpus}", field="vcpus")
    # One socket of N cores: QEMU 7.2 defaults to N sockets, which desktop OS licences and
    # some schedulers treat worse than cores.
    return ["-smp", opts("", cpus=plan.vcpus, sockets=1, cores=plan.vcpus, threads=1)]


def kernel_cmdline(plan: LaunchPlan) -> str:
    """The guest kernel command line: the plan's own, then the quirks measured here."""
    words = [plan.cmdline] if plan.cmdline else []
    words.extend(plan.extra_cmdline)
    words.extend(_timer_quirks(plan))
    return " ".join(w for w in words if w)


def _timer_quirks(plan: LaunchPlan) -> list[str]:
    if plan.accel != "tcg":
        return []
    if plan.machine == "microvm" and plan.tsc_khz:
        # Without a PIT the kernel cannot calibrate the TSC under TCG and spins (≈ half of
        # the boots); reliable skips the watchdog that would otherwise reject the TSC.
        return [f"tsc_early_khz={plan.tsc_khz}", "tsc=reliable"]
    if _is_pci(plan):
        # A boot storm under TCG delays the timer IRQ check long enough to panic
        # ("IO-APIC + timer doesn't work", 3 of 160 boots); skipping it fixed 120/120.
        return ["no_timer_check"]
    return []


def boot_args(plan: LaunchPlan) -> list[str]:
    """Direct kernel boot. -append is one argv element, so it needs no opt escaping."""
    if plan.kernel is None:
        if plan.initrd or plan.cmdline:
            raise InvalidSpec("initrd and cmdline need a kernel", field="kernel")
        return []
    args = ["-kernel", plan.kernel]
    if plan.initrd:
        args += ["-initrd", plan.initrd]
    cmdline = kernel_cmdline(plan)
    if cmdline:
        args += ["-append", cmdline]
    return args


def drive_args(plan: LaunchPlan) -> list[str]:
    args: list[str] = []
    boot = _boot_indexes(plan)
    buses = _cdrom_buses(plan)
    for index, disk in enumerate(plan.disks):
        node = f"disk{index}"
        args += _blockdev_args(disk, node)
        args += ["-device", _disk_device(plan, node, buses.get(index), boot.get(index))]
    return args


def _boot_indexes(plan: LaunchPlan) -> dict[int, int]:
    """Disks first, then CD-ROMs (a blank disk falls through to the installer ISO, and a
    cloud image boots before its cloud-init seed). Not with -kernel: SeaBIOS would
    then rank the disks above the kernel loader."""
    if plan.kernel is not None or not _is_pci(plan):
        return {}
    order = sorted(range(len(plan.disks)), key=lambda i: plan.disks[i].media == "cdrom")
    return {disk: rank + 1 for rank, disk in enumerate(order)}


def _cdrom_buses(plan: LaunchPlan) -> dict[int, str]:
    """The n-th CD-ROM goes on bus ide.<n>: pc's PIIX has ide.0-1 and q35's AHCI ide.0-5,
    and an AHCI port takes one device, so one per bus works on both machines."""
    if not _is_pci(plan):
        return {}
    cdroms = [i for i, disk in enumerate(plan.disks) if disk.media == "cdrom"]
    limit = 2 if plan.machine == "pc" else 6
    if len(cdroms) > limit:
        raise InvalidSpec(f"machine {plan.machine} takes at most {limit} CD-ROMs, "
                          f"got {len(cdroms)}", field="disks")
    return {disk: f"ide.{rank}" for rank, disk in enumerate(cdroms)}


def _blockdev_args(disk: DiskPlan, node: str) -> list[str]:
    readonly = disk.readonly or disk.media == "cdrom"
    # Writable disks pass guest discards down so thin qcow2/raw files shrink again.
    discard = None if readonly else "unmap"
    file_node = _raw_opts("", {"driver": "file", "node-name": f"{node}-file",
                               "filename": disk.path, "read-only": readonly,
                               "discard": discard})
    format_node = _raw_opts("", {"driver": disk.format, "node-name": node,
                                 "file": f"{node}-file", "read-only": readonly,
                                 "discard": discard})
    return ["-blockdev", file_node, "-blockdev", format_node]


def _disk_device(plan: LaunchPlan, node: str, ide_bus: str | None,
                 bootindex: int | None) -> str:
    if ide_bus is not None:
        return opts("ide-cd", bus=ide_bus, drive=node, id=f"{node}-dev", bootindex=bootindex)
    # microvm has no IDE: a CD-ROM image becomes a read-only virtio disk, which still
    # carries its ISO 9660 label (enough for cloud-init's "cidata" seed).
    return opts(_virtio(plan, "blk"), drive=node, id=f"{node}-dev", bootindex=bootindex)


def nic_args(plan: LaunchPlan) -> list[str]:
    args: list[str] = []
    for index, nic in enumerate(plan.nics):
        args += _netdev_args(nic, f"net{index}")
        args += ["-device", opts(_virtio(plan, "net"), netdev=f"net{index}", mac=nic.mac,
                                 id=f"net{index}-dev")]
    return args


def _netdev_args(nic: NicPlan, netdev: str) -> list[str]:
    if nic.kind == "tap":
        if not nic.ifname:
            raise InvalidSpec("a TAP NIC needs the TAP's name", field="nics")
        # The TAP exists before QEMU starts (kasou made it and put it on the bridge), so
        # QEMU runs no ifup/ifdown scripts.
        return ["-netdev", opts("tap", id=netdev, ifname=nic.ifname, script="no",
                                downscript="no", vhost=nic.vhost)]
    if nic.kind != "user":
        raise InvalidSpec(f"NIC kind {nic.kind!r} is not supported yet", field="nics")
    # hostfwd may repeat: QEMU collects the repeated key into a list.
    parts = [f"user,id={netdev}"] + [f"hostfwd={qemu_opt_escape(f)}" for f in nic.forwards]
    return ["-netdev", ",".join(parts)]


def serial_args(plan: LaunchPlan) -> list[str]:
    # The socket is for interactive attach; logfile keeps everything the guest printed even
    # when nobody is attached, and appends so a restart does not erase a crash's output.
    chardev = opts("socket", id="console", path=plan.paths.console, server=True, wait=False,
                   logfile=plan.paths.serial_log, logappend=True)
    return ["-chardev", chardev, "-serial", "chardev:console"]


def qmp_args(plan: LaunchPlan) -> list[str]:
    chardev = opts("socket", id="qmp", path=plan.paths.qmp, server=True, wait=False)
    return ["-chardev", chardev, "-mon", "chardev=qmp,mode=control"]


def display_args(plan: LaunchPlan) -> list[str]:
    # Never a local window: QEMU is daemonized, and with no -display it would pick GTK/SDL
    # or fall back to a VNC server on a TCP port. A VGA device and a VNC server come only
    # when the VM has a display, and that server listens nowhere (-vnc none): the daemon
    # hands QEMU one end of a socket pair per viewer over QMP (add_client), so the screen is
    # reachable only through the API's token-checked proxy. (Not -vnc unix:PATH: a
    # sandboxed QEMU may not create files in the run dir, and 7.2's -vnc takes no fd.)
    args = ["-display", "none"]
    if not plan.display:
        return args
    if not _is_pci(plan):
        raise InvalidSpec("a display needs machine pc or q35; microvm has no VGA",
                          field="display")
    return [*args, "-device", "VGA,id=video0", "-vnc", "none"]


def firmware_args(plan: LaunchPlan) -> list[str]:
    if plan.firmware != "uefi":
        return []
    if not _is_pci(plan):
        raise InvalidSpec("UEFI firmware needs machine pc or q35", field="firmware")
    if not plan.ovmf_code or not plan.ovmf_vars:
        raise InvalidSpec("UEFI firmware needs both the OVMF code and a vars copy",
                          field="firmware")
    code = opts("if=pflash", format="raw", unit=0, readonly=True, file=_local(plan.ovmf_code))
    nvram = opts("if=pflash", format="raw", unit=1, file=_local(plan.ovmf_vars))
    return ["-drive", code, "-drive", nvram]


def _local(path: str) -> str:
    """-drive file= treats 'proto:rest' as a protocol (nbd:, json:, ...) unless a '/'
    comes first; './' keeps a relative path a plain file."""
    return path if path.startswith("/") else f"./{path}"


def balloon_args(plan: LaunchPlan) -> list[str]:
    # free-page-reporting lets the guest hand freed pages back (RSS shrinks without a
    # balloon target); deflate-on-oom lets it take balloon pages back before it OOM-kills.
    return ["-device", opts(_virtio(plan, "balloon"), id="balloon0",
                            free_page_reporting=True, deflate_on_oom=True)]


def rng_args(plan: LaunchPlan) -> list[str]:
    # The default backend (rng-builtin) reads the host's getrandom(); a fresh guest
    # otherwise waits for entropy when sshd or cloud-init first generate keys.
    return ["-device", opts(_virtio(plan, "rng"), id="rng0")]


def agent_args(plan: LaunchPlan) -> list[str]:
    """The guest agent's channel: a virtio-serial port named as qemu-guest-agent expects,
    backed by a Unix socket kasou connects to (kasou/engine/agent.py)."""
    if plan.paths.agent is None:
        return []
    chardev = opts("socket", id="qga0", path=plan.paths.agent, server=True, wait=False)
    return ["-device", opts(_virtio(plan, "serial"), id="vser0"),
            "-chardev", chardev,
            "-device", opts("virtserialport", bus="vser0.0", chardev="qga0", id="qga0-port",
                            name="org.qemu.guest_agent.0")]


def daemon_args(plan: LaunchPlan) -> list[str]:
    # QEMU chdirs to / once daemonized, so every path in the plan should be absolute.
    return ["-daemonize", "-pidfile", plan.paths.pidfile]


def _base_args(plan: LaunchPlan) -> list[str]:
    # -nodefaults/-no-user-config: only the devices listed here, nothing from /etc/qemu.
    # debug-threads names QEMU's threads (CPU 0/TCG...) so per-vCPU use shows in /proc.
    return [plan.qemu_binary, "-nodefaults", "-no-user-config",
            "-name", opts("", guest=plan.name, debug_threads=True),
            "-msg", "timestamp=on"]


_BUILDERS: tuple[Callable[[LaunchPlan], list[str]], ...] = (
    machine_args, accel_args, cpu_args, memory_args, smp_args, firmware_args, boot_args,
    drive_args, nic_args, balloon_args, rng_args, agent_args, serial_args, qmp_args,
    display_args, daemon_args,
)


def build_argv(plan: LaunchPlan) -> list[str]:
    """The whole command line, binary first."""
    argv = _base_args(plan)
    for builder in _BUILDERS:
        argv += builder(plan)
    return argv + list(plan.extra_args)
