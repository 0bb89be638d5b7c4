"""Typed QMP commands for storage: block nodes, devices, throttling, internal snapshots
(QEMU 7.2's snapshot-save/-load jobs), and saving/restoring RAM through migration.

Saving state: QEMU 7.2 has no `file:` migration, so the daemon opens the file itself and
hands QEMU the descriptor over the QMP socket (SCM_RIGHTS + `getfd`), never a shell
command line (`exec:`) with a path in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from qemu.qmp import QMPClient, QMPError

from kasou.engine.qmp import _execute
from kasou.errors import QMPFailure

DEVICE_DELETED = "DEVICE_DELETED"
# The default cap (128 MiB/s) made a 92 MiB save take ~710 ms; raised, ~90-130 ms.
MIGRATE_BANDWIDTH = 64 << 30
POLL = 0.02


async def blockdev_add(qmp: QMPClient, node: dict[str, Any]) -> None:
    await _execute(qmp, "blockdev-add", node)


async def blockdev_del(qmp: QMPClient, node_name: str) -> None:
    await _execute(qmp, "blockdev-del", {"node-name": node_name})


async def object_add(qmp: QMPClient, obj: dict[str, Any]) -> None:
    await _execute(qmp, "object-add", obj)


async def object_del(qmp: QMPClient, obj_id: str) -> None:
    await _execute(qmp, "object-del", {"id": obj_id})


async def device_add(qmp: QMPClient, dev: dict[str, Any]) -> None:
    await _execute(qmp, "device_add", dev)


async def device_ids(qmp: QMPClient) -> set[str]:
    """Ids of the devices kasou created (-device / device_add with an id)."""
    props = await _execute(qmp, "qom-list", {"path": "/machine/peripheral"})
    return {str(p["name"]) for p in props if str(p.get("type", "")).startswith("child<")}


async def device_del(qmp: QMPClient, dev_id: str, timeout: float) -> bool:
    """Ask the guest to release a device; True once QEMU reports it gone. PCI unplug
    needs the guest's cooperation (ACPI), so this can time out (False)."""
    with qmp.listener(DEVICE_DELETED) as events:
        await _execute(qmp, "device_del", {"id": dev_id})
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    data = event.get("data")
                    if isinstance(data, dict) and data.get("device") == dev_id:
                        return True
        except TimeoutError:
            return False
    return False


async def set_throttle(qmp: QMPClient, group: str, limits: dict[str, int]) -> None:
    await _execute(qmp, "qom-set", {"path": f"/objects/{group}", "property": "limits",
                                    "value": limits})


async def get_throttle(qmp: QMPClient, group: str) -> dict[str, int]:
    value = await _execute(qmp, "qom-get", {"path": f"/objects/{group}",
                                            "property": "limits"})
    return {str(k): int(v) for k, v in value.items()}


async def block_resize(qmp: QMPClient, node_name: str, size: int) -> None:
    await _execute(qmp, "block_resize", {"node-name": node_name, "size": size})


# -- internal snapshots ------------------------------------------------------------------
async def run_job(qmp: QMPClient, command: str, args: dict[str, Any],
                  timeout: float) -> None:
    """Start a QMP job, wait until it concludes, dismiss it; raise with its error."""
    job_id = str(args["job-id"])
    await _execute(qmp, command, args)
    deadline = time.monotonic() + timeout
    try:
        while True:
            job = await _job(qmp, job_id)
            if job.get("status") == "concluded":
                if job.get("error"):
                    raise QMPFailure(f"QMP {command} failed: {job['error']}")
                return
            if time.monotonic() > deadline:
                await _cancel(qmp, job_id)
                raise QMPFailure(f"QMP {command} did not finish in {timeout:.0f}s")
            await asyncio.sleep(POLL * 2)
    finally:
        with contextlib.suppress(QMPFailure):
            await _execute(qmp, "job-dismiss", {"id": job_id})


async def _job(qmp: QMPClient, job_id: str) -> dict[str, Any]:
    for job in await _execute(qmp, "query-jobs"):
        if job.get("id") == job_id:
            return dict(job)
    raise QMPFailure(f"QMP job {job_id} vanished")


async def _cancel(qmp: QMPClient, job_id: str) -> None:
    with contextlib.suppress(QMPFailure):
        await _execute(qmp, "job-cancel", {"id": job_id})


async def snapshot_save(qmp: QMPClient, tag: str, vmstate: str, devices: list[str],
                        timeout: float = 600) -> None:
    """RAM, device state and every listed disk, consistent: QEMU pauses the guest while
    it saves and resumes it if it was running."""
    await run_job(qmp, "snapshot-save", {"job-id": f"save-{tag}", "tag": tag,
                                         "vmstate": vmstate, "devices": devices}, timeout)


async def snapshot_load(qmp: QMPClient, tag: str, vmstate: str, devices: list[str],
                        timeout: float = 600) -> None:
    await run_job(qmp, "snapshot-load", {"job-id": f"load-{tag}", "tag": tag,
                                         "vmstate": vmstate, "devices": devices}, timeout)


async def snapshot_disks(qmp: QMPClient, tag: str, devices: list[str]) -> None:
    """Disk-only internal snapshots of several nodes in one transaction (all or none)."""
    actions = [{"type": "blockdev-snapshot-internal-sync",
                "data": {"device": dev, "name": tag}} for dev in devices]
    await _execute(qmp, "transaction", {"actions": actions})


async def snapshot_delete(qmp: QMPClient, tag: str, device: str) -> None:
    await _execute(qmp, "blockdev-snapshot-delete-internal-sync",
                   {"device": device, "name": tag})


# -- saving and restoring RAM ------------------------------------------------------------
def _pass_fd(qmp: QMPClient, fd: int) -> None:
    try:
        qmp.send_fd_scm(fd)
    except (QMPError, OSError) as e:
        raise QMPFailure(f"cannot pass a file to QEMU: {e}") from e


async def add_fd(qmp: QMPClient, fd: int, name: str) -> None:
    _pass_fd(qmp, fd)
    await _execute(qmp, "getfd", {"fdname": name})


async def save_to_fd(qmp: QMPClient, fd: int, timeout: float = 600) -> int:
    """Write RAM and device state to fd (the guest should be paused); bytes written."""
    await _execute(qmp, "migrate-set-parameters", {"max-bandwidth": MIGRATE_BANDWIDTH})
    await add_fd(qmp, fd, "kasou-save")
    await _execute(qmp, "migrate", {"uri": "fd:kasou-save"})
    info = await _wait_migration(qmp, timeout)
    return int(info.get("ram", {}).get("total", 0))


async def _wait_migration(qmp: QMPClient, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = dict(await _execute(qmp, "query-migrate"))
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise QMPFailure(f"saving the VM state failed: "
                             f"{info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            with contextlib.suppress(QMPFailure):
                await _execute(qmp, "migrate_cancel")
            raise QMPFailure(f"saving the VM state did not finish in {timeout:.0f}s")
        await asyncio.sleep(POLL)


async def restore_from_fd(qmp: QMPClient, fd: int, timeout: float = 600) -> str:
    """Load state from fd into a QEMU started with `-incoming defer`; its run state
    after loading ("running" or "paused")."""
    await add_fd(qmp, fd, "kasou-restore")
    await _execute(qmp, "migrate-incoming", {"uri": "fd:kasou-restore"})
    deadline = time.monotonic() + timeout
    while True:
        status = str((await _execute(qmp, "query-status"))["status"])
        if status != "inmigrate":
            return status
        if time.monotonic() > deadline:
            raise QMPFailure(f"restoring the VM state did not finish in {timeout:.0f}s")
        await asyncio.sleep(POLL)
