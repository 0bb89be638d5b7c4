"""CLI parts of cloud-init and the guest agent: `vm create --user-data/--ssh-key/--hostname`,
`kasou vm exec NAME -- CMD...`, and the guest's facts in `kasou vm show`."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import call, fail

CLOUD_INIT_HELP = {
    "user_data": "cloud-init user-data: a #cloud-config YAML file or a #! script.",
    "ssh_key": "A public key file (.pub) for the guest's default user (repeatable).",
    "hostname": "The guest's host name (default: from the VM name).",
}


def _read(field: str, path: str, limit: int) -> str:
    p = Path(path).expanduser()
    try:
        if p.stat().st_size > limit:
            fail(f"{field}: {path} is larger than {limit} bytes")
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{field}: cannot read {path}: {getattr(e, 'strerror', None) or e}")


def vm_cloudinit_spec(user_data: str | None, ssh_keys: list[str],
                      hostname: str | None) -> dict[str, Any]:
    """Spec fields from the options; files are read here, checked again by the daemon."""
    spec: dict[str, Any] = {}
    if user_data is not None:
        from kasou.cloudinit.userdata import MAX_USER_DATA  # yaml: only when used

        spec["user_data"] = _read("user_data", user_data, MAX_USER_DATA)
    keys: list[str] = []
    for path in ssh_keys:
        try:
            from kasou.cloudinit.userdata import parse_ssh_keys

            keys += parse_ssh_keys(_read("ssh_keys", path, 64 << 10))
        except ValueError as e:
            fail(f"ssh_keys: {path}: {e}")
    if keys:
        spec["ssh_keys"] = keys
    if hostname is not None:
        spec["hostname"] = hostname
    return spec


def guest_lines(extras: dict[str, Any]) -> dict[str, str]:
    """`kasou vm show` lines for the guest agent's and cloud-init's facts."""
    lines: dict[str, str] = {}
    ci = extras.get("cloud_init") or {}
    if ci:
        lines["hostname"] = ci.get("hostname", "")
    guest = extras.get("guest") or {}
    if not guest:
        return lines
    if guest.get("agent") != "answering":
        lines["guest agent"] = guest.get("agent", "")
        return lines
    lines["guest os"] = f"{guest.get('os')} ({guest.get('kernel')})"
    for iface, addrs in (guest.get("addresses") or {}).items():
        lines[f"guest {iface}"] = ", ".join(addrs)
    return lines


def vm_exec(name: str,
            command: list[str] = typer.Argument(..., help="The command and its arguments "
                                                "(put them after --)."),
            timeout: float = typer.Option(60.0, help="Seconds to wait for it to finish."),
            stdin: bool = typer.Option(False, "--stdin",
                                       help="Pass this command's standard input to it.")) -> None:
    """Run a command in the guest through its agent; exit with the command's code."""
    body: dict[str, Any] = {"command": command, "timeout": timeout}
    if stdin:
        body["stdin_base64"] = base64.b64encode(sys.stdin.buffer.read()).decode()
    client = Client(timeout=timeout + 30)
    result = call(client.post, f"/vms/{name}/exec", body)
    sys.stdout.buffer.write(base64.b64decode(result["stdout_base64"]))
    sys.stdout.flush()
    sys.stderr.buffer.write(base64.b64decode(result["stderr_base64"]))
    sys.stderr.flush()
    if result.get("truncated"):
        sys.stderr.write("kasou: output was cut at the guest agent's limit (16 MiB)\n")
    if result.get("signal") is not None:
        raise typer.Exit(128 + int(result["signal"]))
    raise typer.Exit(int(result.get("exitcode") or 0))
