"""Addresses, MACs and interface names (pure)."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Collection

from kasou.errors import CapacityError, InvalidSpec

# QEMU's own OUI: guests and tools know it as a virtual NIC.
OUI = "52:54:00"
USER_GUEST_IP = "10.0.2.15"      # what QEMU's user-mode DHCP hands out first


def gateway_of(subnet: str) -> str:
    """The host's address on the bridge: the subnet's first host."""
    return str(ipaddress.IPv4Network(subnet).network_address + 1)


def check_ip(subnet: str, gateway: str, ip: str, field: str) -> None:
    net = ipaddress.IPv4Network(subnet)
    addr = ipaddress.IPv4Address(ip)
    if addr not in net:
        raise InvalidSpec(f"{field}: {ip} is not in the network's subnet {subnet}", field=field)
    if addr in (net.network_address, net.broadcast_address):
        raise InvalidSpec(f"{field}: {ip} is the subnet's network or broadcast address",
                          field=field)
    if ip == gateway:
        raise InvalidSpec(f"{field}: {ip} is the network's gateway (the host)", field=field)


def allocate_ip(subnet: str, gateway: str, taken: Collection[str]) -> str:
    """The lowest free host address; CapacityError when the subnet is full."""
    net = ipaddress.IPv4Network(subnet)
    skip = {gateway, *taken}
    for addr in net.hosts():
        if str(addr) not in skip:
            return str(addr)
    raise CapacityError(f"subnet {subnet} has no free address left")


def random_mac() -> str:
    tail = secrets.token_bytes(3)
    return OUI + "".join(f":{b:02x}" for b in tail)


def user_mac(vm_id: str, index: int = 0) -> str:
    """Stable across restarts without being stored: derived from the VM's id."""
    digest = hashlib.sha256(f"{vm_id}/{index}".encode()).digest()
    return OUI + "".join(f":{b:02x}" for b in digest[:3])


def tap_name(vm_id: str, index: int) -> str:
    """kt<12 hex id><index>: 15 bytes, the Linux limit, and recognisably kasou's."""
    return f"kt{vm_id[:12]}{index}"


def ifb_name(vm_id: str, index: int) -> str:
    """The IFB that shapes what the guest sends (a TAP's ingress cannot queue)."""
    return f"kb{vm_id[:12]}{index}"


def vm_id_of_tap(name: str) -> str | None:
    if len(name) == 15 and name[:2] in ("kt", "kb") and name[14].isdigit():
        ident = name[2:14]
        if all(c in "0123456789abcdef" for c in ident):
            return ident
    return None
