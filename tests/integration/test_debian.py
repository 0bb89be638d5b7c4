"""The debian image with cloud-init and the guest agent, on a real guest.

One debian boot (first boot of a cloud image under TCG takes minutes on a busy host):
user-data writes a file and runs a command, the file is read back over the guest agent
(`kasou vm exec`) AND over SSH through a user-mode port forward with the key given by
--ssh-key; `kasou vm show` lists what the agent says; the cached image is not written.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kasou.images.manifest import ImageManifest
from kasou.images.registry import build_image
from tests.integration.conftest import Kasou, booted, wait_for, wait_serial

BOOT_TIMEOUT = 600       # cloud-init's four Python stages under TCG, on a loaded host
MARKER = "/var/lib/kasou-test/marker"
USER_DATA = f"""#cloud-config
write_files:
  - path: {MARKER}
    content: "written by user-data\\n"
runcmd:
  - [sh, -c, "hostname > /var/lib/kasou-test/hostname"]
"""


@pytest.fixture(scope="session")
def debian() -> ImageManifest:
    """Built from Debian packages once (≈ 3 min), then cached."""
    return build_image("debian")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def ssh(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "debian@127.0.0.1", command],
        capture_output=True, text=True, timeout=120, check=False)


def guest_facts(k: Kasou, name: str) -> dict[str, Any] | None:
    facts: dict[str, Any] = k.vm(name)["extras"].get("guest") or {}
    return facts if facts.get("agent") == "answering" and facts.get("ips") else None


# The first test to use the image also builds it (≈ 3 min, once): more than the usual ceiling.
@pytest.mark.timeout(1800)
def test_debian_vm_with_user_data_over_agent_and_ssh(kasou: Kasou, debian: ImageManifest,
                                                     tmp_path: Path) -> None:
    assert debian.disk and debian.cloud_init
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "user-data").write_text(USER_DATA)
    base_before = sha256(debian.disk)
    port = free_port()

    vm = booted(kasou, "deb1", "--image", "debian", "--memory", "512M", "--vcpus", "2",
                "--user-data", str(tmp_path / "user-data"), "--ssh-key", f"{key}.pub",
                "--hostname", "web-one", "--forward", f"{port}:22", timeout=BOOT_TIMEOUT)
    wait_serial(vm, r"KASOU READY web-one", BOOT_TIMEOUT)

    # The VM writes to its own overlay, backed by the image's disk.
    run_dir = kasou.home / "vms" / vm["id"]
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                      str(run_dir / "root.qcow2")], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["backing-filename"] == debian.disk

    # Over the guest agent.
    got = kasou.run("vm", "exec", "deb1", "--", "cat", MARKER)
    assert got.stdout == "written by user-data\n"
    failed = kasou.run("vm", "exec", "deb1", "--", "sh", "-c", "echo oops >&2; exit 7",
                       check=False)
    assert failed.returncode == 7 and failed.stderr == "oops\n"
    missing = kasou.run("vm", "exec", "deb1", "--", "/no/such/program", check=False)
    assert missing.returncode == 1
    assert "error: command: the guest cannot run '/no/such/program'" in missing.stderr

    # `vm show` has what the agent says: the OS and the guest's addresses.
    facts = wait_for(lambda: guest_facts(kasou, "deb1"), 120, "the agent's facts in show")
    assert "Debian GNU/Linux 12" in facts["os"]
    assert any(re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip) for ip in facts["ips"])
    shown = kasou.run("vm", "show", "deb1").stdout
    assert "Debian GNU/Linux 12" in shown and facts["ips"][0] in shown

    # Over SSH through the port forward, with the key given at create.
    result = wait_for(lambda: (r := ssh(key, port, f"cat {MARKER}; cat /var/lib/kasou-test/"
                                                   "hostname")).returncode == 0 and r,
                      180, "ssh through the forward")
    assert result.stdout == "written by user-data\nweb-one\n"
    assert ssh(key.with_name("nokey"), port, "true").returncode != 0

    assert kasou.json("vm", "stop", "deb1")["state"] == "stopped"
    kasou.run("vm", "delete", "deb1")
    assert not run_dir.exists()
    assert sha256(debian.disk) == base_before, "the cached image disk was written"


def test_a_guest_without_agent_gives_a_clear_error(kasou: Kasou) -> None:
    booted(kasou, "noagent", "--image", "tiny")
    r = kasou.run("vm", "exec", "noagent", "--", "true", check=False, timeout=60)
    assert r.returncode == 1
    assert "no guest agent answers" in r.stderr and "Traceback" not in r.stderr
    wait_for(lambda: kasou.vm("noagent")["extras"].get("guest", {}).get("agent")
             == "not answering", 60, "show to say the agent does not answer")
    assert re.search(r"(?m)^guest agent +not answering$",
                     kasou.run("vm", "show", "noagent").stdout)
    kasou.run("vm", "stop", "noagent", "--force")
    r = kasou.run("vm", "exec", "noagent", "--", "true", check=False)
    assert "cannot exec VM 'noagent': it is stopped; exec needs running" in r.stderr


def test_bad_cloud_init_input_creates_nothing(kasou: Kasou, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nwrite_files:\n  - path: /x\n   content: [\n")
    r = kasou.run("vm", "create", "b1", "--image", "tiny", "--user-data", str(bad),
                  check=False)
    assert r.returncode == 1 and "user_data: is not valid YAML: line 4" in r.stderr
    script = tmp_path / "plain.txt"
    script.write_text("echo hi\n")
    r = kasou.run("vm", "create", "b1", "--image", "tiny", "--user-data", str(script),
                  check=False)
    assert "user_data: must start with '#cloud-config'" in r.stderr
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    r = kasou.run("vm", "create", "b1", "--image", "tiny", "--ssh-key", str(key), check=False)
    assert "ssh_keys" in r.stderr and "private key" in r.stderr
    # well-formed, but the image has no cloud-init to read it
    r = kasou.run("vm", "create", "b1", "--image", "tiny", "--ssh-key", f"{key}.pub",
                  check=False)
    assert r.returncode == 1
    assert "ssh_keys: image 'tiny' has no cloud-init" in r.stderr
    assert kasou.json("vm", "list") == []
    assert list((kasou.home / "vms").iterdir()) == []
