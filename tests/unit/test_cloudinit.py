"""cloud-init input checks, the NoCloud seed ISO, and the spec fields that carry them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pycdlib
import pytest
import yaml

from kasou.cloudinit import userdata
from kasou.cloudinit.hook import user_input, wants_seed
from kasou.cloudinit.seed import LABEL, SeedData, build_iso, write_seed
from kasou.errors import InvalidSpec
from kasou.spec import parse_spec


def pubkey(kind: str = "ssh-ed25519", comment: str = "me@host") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + (32).to_bytes(4, "big") + bytes(32)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


# -- user-data ---------------------------------------------------------------------------

def test_cloud_config_and_scripts_are_accepted() -> None:
    text = "#cloud-config\nwrite_files:\n  - path: /etc/x\n    content: hi\nruncmd: [ls]\n"
    assert userdata.check_user_data(text) == text
    assert userdata.check_user_data("#!/bin/sh\necho hi\n").startswith("#!")
    assert userdata.check_user_data("#cloud-config\n") == "#cloud-config\n"


@pytest.mark.parametrize(("text", "reason"), [
    ("#cloud-config\nfoo: [1, 2\nbar: 3\n", "not valid YAML: line 3"),
    ("#cloud-config\n- a\n- b\n", "must be a YAML mapping (key: value), not a list"),
    ("#cloud-config\n'just a string'\n", "not a string"),
    ("hello: world\n", "must start with '#cloud-config'"),
    ("", "must start with '#cloud-config'"),
    ("#include http://example.com/x\n", "must start with '#cloud-config'"),
    ("#cloud-config\nruncmd: ls -l\n", "runcmd must be a list, not a string"),
    ("#cloud-config\nwrite_files:\n  - content: x\n", "write_files[0] must be a mapping"),
    ("#cloud-config\n1: one\n", "keys must be strings"),
    ("#!/bin/sh\n\x00", "NUL byte"),
])
def test_bad_user_data_says_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        userdata.check_user_data(text)
    assert reason in str(e.value)


def test_user_data_size_is_capped() -> None:
    big = "#cloud-config\n#" + "x" * userdata.MAX_USER_DATA
    with pytest.raises(ValueError, match="at most"):
        userdata.check_user_data(big)


def test_spec_names_the_field() -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_spec({"name": "a", "image": "debian", "user_data": "#cloud-config\na: [\n"})
    assert e.value.field == "user_data"
    assert "line 3" in e.value.message
    with pytest.raises(InvalidSpec) as e:
        parse_spec({"name": "a", "image": "debian", "ssh_keys": ["ssh-rsa nope"]})
    assert e.value.field == "ssh_keys"
    with pytest.raises(InvalidSpec) as e:
        parse_spec({"name": "a", "image": "debian", "hostname": "under_score"})
    assert e.value.field == "hostname"


# -- keys and host names -------------------------------------------------------------------

def test_public_keys_are_checked() -> None:
    key = pubkey()
    assert userdata.check_ssh_key(key + "\n") == key
    assert userdata.check_ssh_key(pubkey("ssh-rsa")).startswith("ssh-rsa ")
    # the blob names its own type: an ed25519 blob labelled ssh-rsa is refused
    forged = "ssh-rsa " + key.split()[1]
    with pytest.raises(ValueError, match="not a ssh-rsa key"):
        userdata.check_ssh_key(forged)
    with pytest.raises(ValueError, match="not base64"):
        userdata.check_ssh_key("ssh-ed25519 !!!! x")
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        userdata.check_ssh_key("hello world")


def test_authorized_keys_text_and_private_keys() -> None:
    text = f"# mine\n{pubkey()}\n\n{pubkey('ecdsa-sha2-nistp256', 'other')}\n"
    assert len(userdata.parse_ssh_keys(text)) == 2
    with pytest.raises(ValueError, match="private key"):
        userdata.parse_ssh_keys("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n")
    with pytest.raises(ValueError, match="no public key"):
        userdata.parse_ssh_keys("# nothing\n")


@pytest.mark.parametrize("name", ["web", "web-1", "a.b.example", "x" * 63])
def test_good_hostnames(name: str) -> None:
    assert userdata.check_hostname(name) == name


@pytest.mark.parametrize("name", ["-web", "web-", "under_score", "a..b", "x" * 64, "", "ü"])
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid host name"):
        userdata.check_hostname(name)


@pytest.mark.parametrize(("vm", "host"), [("web_1", "web-1"), ("db.prod", "db.prod"),
                                          ("a-", "a"), ("_", "vm"), ("Web", "Web")])
def test_hostname_from_vm_name(vm: str, host: str) -> None:
    assert userdata.hostname_for(vm) == host


# -- the seed ------------------------------------------------------------------------------

def _read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        files = {}
        for name in ("user-data", "meta-data", "network-config"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue()
            joliet = io.BytesIO()
            iso.get_file_from_iso_fp(joliet, joliet_path=f"/{name}")
            assert joliet.getvalue() == out.getvalue()
        label = iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()
    return label, files


def test_seed_iso_holds_the_three_files_under_the_cidata_label(tmp_path: Path) -> None:
    ud = "#cloud-config\nwrite_files:\n  - path: /etc/marker\n    content: hi\n"
    data = SeedData(instance_id="iid-abc", hostname="web-1", user_data=ud,
                    ssh_keys=(pubkey(),))
    path = write_seed(data, tmp_path / "seed.iso")
    label, files = _read_iso(path.read_bytes())
    assert label == LABEL == "cidata"
    assert files["user-data"].decode() == ud
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "iid-abc", "local-hostname": "web-1",
                    "public-keys": [pubkey()]}
    net = yaml.safe_load(files["network-config"])
    assert net["version"] == 2
    assert net["ethernets"]["all"]["dhcp4"] is True
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".*.tmp"))


def test_seed_without_user_data_is_an_empty_cloud_config() -> None:
    _, files = _read_iso(build_iso(SeedData(instance_id="iid-1", hostname="h")))
    assert files["user-data"] == b"#cloud-config\n"
    assert "public-keys" not in yaml.safe_load(files["meta-data"])


def test_which_vms_get_a_seed() -> None:
    plain = parse_spec({"name": "a", "image": "tiny"})
    assert user_input(plain) is None and not wants_seed(plain, None)
    keyed = parse_spec({"name": "a", "disks": ["/srv/cloud.qcow2"], "ssh_keys": [pubkey()]})
    assert user_input(keyed) == "ssh_keys" and wants_seed(keyed, None)
