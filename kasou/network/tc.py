"""Bandwidth limits per NIC with tc, through pyroute2.

Why tc and not QEMU: QEMU 7.2 has no rate-limiting netdev filter (filter-buffer only
releases packets at an interval; `throttle` groups are for block devices), while tc shapes
at the TAP, is changed live without touching QEMU, and is what the kernel does best.

- To the guest (the TAP's egress): a tbf qdisc at the TAP's root.
- From the guest (the TAP's ingress, where nothing can queue): an ingress qdisc redirects
  every packet (u32 match-all + mirred) to an IFB device whose root is a tbf. A `police`
  action would only drop, and it is not built into every kernel (not this one).
"""

from __future__ import annotations

import contextlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kasou.errors import EngineError
from kasou.network import host

LATENCY = "50ms"        # how long a packet may wait in the bucket before tbf drops it
ETH_P_ALL = 0x0003
INGRESS = 0xFFFF0000


def burst_bytes(rate_bits: int) -> int:
    """Enough for 10 ms at the rate (one jiffy at HZ=100), never less than a few full
    frames; too small a bucket and tbf cannot reach the rate at all."""
    return max(rate_bits // 8 // 100, 32 * 1024)


def _set_tbf(ipr: IPRoute, idx: int, rate_bits: int) -> None:
    ipr.tc("replace", "tbf", idx, handle="1:", rate=f"{rate_bits}bit",
           burst=burst_bytes(rate_bits), latency=LATENCY)


def _clear_root(ipr: IPRoute, idx: int) -> None:
    with contextlib.suppress(NetlinkError):
        ipr.tc("del", index=idx, handle="1:", parent=0xFFFFFFFF)


def _clear_ingress(ipr: IPRoute, idx: int) -> None:
    with contextlib.suppress(NetlinkError):
        ipr.tc("del", "ingress", idx, "ffff:")


def apply(tap: str, ifb: str, rate_in: int | None, rate_out: int | None) -> None:
    """Make the TAP's limits these (None: unlimited); idempotent, safe on a live VM."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=tap)
            if not found:
                return   # the VM is not running: its limits apply at the next start
            idx = int(found[0])
            if rate_in:
                _set_tbf(ipr, idx, rate_in)
            else:
                _clear_root(ipr, idx)
            _clear_ingress(ipr, idx)
        if rate_out:
            _limit_outbound(tap, idx, ifb, rate_out)
        else:
            host.delete_link(ifb)
    except NetlinkError as e:
        raise EngineError(f"cannot set bandwidth limits on {tap}: {e}") from e


def _limit_outbound(tap: str, idx: int, ifb: str, rate_out: int) -> None:
    ifb_idx = host.ensure_ifb(ifb)
    with IPRoute() as ipr:
        _set_tbf(ipr, ifb_idx, rate_out)
        ipr.tc("add", "ingress", idx, "ffff:")
        ipr.tc("add-filter", "u32", idx, parent=INGRESS, protocol=ETH_P_ALL, prio=10,
               target=0x10001, keys=["0x0/0x0+0"],
               action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                        "ifindex": ifb_idx}])


def current(tap: str, ifb: str) -> tuple[int | None, int | None]:
    """The rates in force now (bits/s to and from the guest), read back from the kernel."""
    with IPRoute() as ipr:
        return _tbf_rate(ipr, tap), _tbf_rate(ipr, ifb)


def _tbf_rate(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    for q in ipr.get_qdiscs(int(found[0])):
        if q.get_attr("TCA_KIND") == "tbf":
            parms = q.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
            if parms:
                return int(parms["rate"]) * 8
    return None
