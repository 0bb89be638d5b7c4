"""The NoCloud seed: an ISO 9660 volume labelled `cidata` holding user-data, meta-data
and network-config, made with pycdlib (no genisoimage/xorriso on the host).

cloud-init finds it by its label (`blkid LABEL=cidata`), mounts it and reads the three
files by their Rock Ridge/Joliet names; the ISO 9660 names underneath are only what the
standard requires.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import yaml

LABEL = "cidata"
SEED_FILE = "seed.iso"

# Any wired NIC the guest names e* (ens3, enp0s3, eth0) asks DHCP for an address: kasou's
# NICs get theirs from QEMU's user-mode DHCP or from the network area's dnsmasq.
NETWORK_CONFIG: dict[str, object] = {
    "version": 2,
    "ethernets": {"all": {"match": {"name": "e*"}, "dhcp4": True}},
}


@dataclass(frozen=True)
class SeedData:
    instance_id: str
    hostname: str
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()

    def meta_data(self) -> str:
        meta: dict[str, object] = {"instance-id": self.instance_id,
                                   "local-hostname": self.hostname}
        if self.ssh_keys:
            meta["public-keys"] = list(self.ssh_keys)
        return yaml.safe_dump(meta, sort_keys=False)

    def files(self) -> dict[str, bytes]:
        """Guest file name -> content."""
        return {
            "user-data": (self.user_data or "#cloud-config\n").encode(),
            "meta-data": self.meta_data().encode(),
            "network-config": yaml.safe_dump(NETWORK_CONFIG, sort_keys=False).encode(),
        }


def build_iso(data: SeedData) -> bytes:
    """The seed volume's bytes."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, content in data.files().items():
            iso_name = "/" + name.upper().replace("-", "_") + ".;1"
            iso.add_fp(io.BytesIO(content), len(content), iso_name, rr_name=name,
                       joliet_path="/" + name)
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def write_seed(data: SeedData, dest: Path) -> Path:
    """Write the seed atomically (a half-written seed is never attached)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(build_iso(data))
    os.chmod(tmp, 0o600)
    os.replace(tmp, dest)
    return dest
