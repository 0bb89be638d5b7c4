"""Links and addresses through pyroute2 (netlink), never by parsing `ip` output.

Every function is synchronous and opens its own netlink socket. pyroute2 0.9 runs its own
asyncio loop inside each call, which cannot run inside the daemon's loop, so async callers
go through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kasou.errors import EngineError, UserError

BRIDGE_SYSFS = Path("/sys/class/net")


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("host networks need root (CAP_NET_ADMIN): run the kasou daemon as "
                        "root, or use user-mode NAT (the default, with --forward)")


@contextlib.contextmanager
def _ipr() -> Iterator[IPRoute]:
    with IPRoute() as ipr:
        yield ipr


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_exists(name: str) -> bool:
    with _ipr() as ipr:
        return _index(ipr, name) is not None


def link_names() -> list[str]:
    with _ipr() as ipr:
        return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())


@dataclass(frozen=True)
class LinkInfo:
    name: str
    kind: str | None
    master: str | None
    up: bool


def link_info(name: str) -> LinkInfo | None:
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return None
        link = ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        master_idx = link.get_attr("IFLA_MASTER")
        master = None
        if master_idx:
            master = str(ipr.get_links(master_idx)[0].get_attr("IFLA_IFNAME"))
        return LinkInfo(name=name, kind=kind, master=master, up=bool(link["flags"] & 1))


def host_networks(exclude: str | None = None) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, subnet) for every IPv4 address and non-default route on the host."""
    out: list[tuple[str, ipaddress.IPv4Network]] = []
    with _ipr() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME"))
                 for link in ipr.get_links()}
        for addr in ipr.get_addr(family=2):
            dev = names.get(int(addr["index"]), "?")
            if dev == exclude:
                continue
            net = ipaddress.IPv4Network(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}",
                                        strict=False)
            out.append((dev, net))
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            dev = names.get(int(route.get_attr("RTA_OIF") or 0), "?")
            if dst and route["dst_len"] > 0 and dev != exclude:
                out.append((dev, ipaddress.IPv4Network(f"{dst}/{route['dst_len']}",
                                                       strict=False)))
    return out


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """The bridge exists, is up, has the gateway address and passes its IPv4 traffic through
    the inet hooks (per-bridge nf_call_iptables), so the firewall sees VM-to-VM traffic."""
    try:
        with _ipr() as ipr:
            idx = _index(ipr, name)
            if idx is None:
                ipr.link("add", ifname=name, kind="bridge", br_stp_state=0,
                         br_forward_delay=0)
                idx = _index(ipr, name)
                assert idx is not None
            ipr.link("set", index=idx, kind="bridge", br_nf_call_iptables=1)
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(index=idx, family=2)}
            if (gateway, prefixlen) not in have:
                ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
            ipr.link("set", index=idx, state="up")
    except NetlinkError as e:
        raise EngineError(f"cannot set up bridge {name}: {e}") from e


def delete_link(name: str) -> None:
    with _ipr() as ipr:
        idx = _index(ipr, name)
        if idx is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=idx)


def ensure_tap(name: str, bridge: str, mtu: int | None = None) -> None:
    """A persistent TAP for QEMU to open by name, enslaved to the bridge and up."""
    try:
        with _ipr() as ipr:
            br = _index(ipr, bridge)
            if br is None:
                raise EngineError(f"bridge {bridge} is missing")
            idx = _index(ipr, name)
            if idx is None:
                ipr.link("add", ifname=name, kind="tuntap", mode="tap")
                idx = _index(ipr, name)
                assert idx is not None
            settings: dict[str, object] = {"master": br, "state": "up"}
            if mtu:
                settings["mtu"] = mtu
            ipr.link("set", index=idx, **settings)
    except NetlinkError as e:
        raise EngineError(f"cannot set up TAP {name}: {e}") from e


def reattach_tap(name: str, bridge: str) -> bool:
    """Put an existing TAP back on its bridge (after the bridge was re-created);
    False when the TAP itself is gone (its VM lost its link: a restart brings it back)."""
    with _ipr() as ipr:
        idx, br = _index(ipr, name), _index(ipr, bridge)
        if idx is None or br is None:
            return False
        ipr.link("set", index=idx, master=br, state="up")
        return True


def ensure_ifb(name: str) -> int:
    try:
        with _ipr() as ipr:
            idx = _index(ipr, name)
            if idx is None:
                ipr.link("add", ifname=name, kind="ifb")
                idx = _index(ipr, name)
                assert idx is not None
            ipr.link("set", index=idx, state="up")
            return idx
    except NetlinkError as e:
        raise EngineError(f"cannot set up IFB {name}: {e}") from e


def ip_forward() -> bool:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"


def set_ip_forward(on: bool) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n" if on else "0\n")


def ensure_br_netfilter() -> None:
    """The bridge's `nf_call_iptables` needs br_netfilter (built in here, a module on most
    distributions)."""
    if Path("/proc/sys/net/bridge").exists():
        return
    subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=30, check=False)
    if not Path("/proc/sys/net/bridge").exists():
        raise EngineError("the VM firewall needs the br_netfilter kernel module "
                          "(modprobe br_netfilter failed)")
