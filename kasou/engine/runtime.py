"""runtime.json: what the daemon needs to re-attach to a running QEMU, versioned.

Written when QEMU has started, read when the daemon starts again. Old versions are
upgraded on load (no old version exists yet; the hook is here so one can be added).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

RUNTIME_VERSION = 1


class Runtime(BaseModel):
    version: int = RUNTIME_VERSION
    vm_id: str
    pid: int
    proc_start: int          # /proc/<pid>/stat start time: guards against pid reuse
    argv: list[str]
    qmp: str
    console: str
    serial_log: str
    accel: str
    machine: str
    started_at: str
    graceful_stop: bool = True


def _upgrade(data: dict[str, object]) -> dict[str, object]:
    version = data.get("version", 1)
    if version != RUNTIME_VERSION:
        raise ValueError(f"runtime.json version {version} is newer than this kasou knows")
    return data


def save(path: Path, rt: Runtime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(rt.model_dump_json(indent=2))
    os.replace(tmp, path)


def load(path: Path) -> Runtime | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return Runtime.model_validate(_upgrade(data))
