"""kasou's nftables rules, built whole from stored state (pure) and applied in one `nft -j`
transaction, so a change is atomic and re-applying after a restart or reboot is idempotent.

Two tables, both named `kasou`:

- `bridge kasou`: anti-spoofing on each TAP, before the bridge learns or forwards anything:
  only the NIC's MAC, ARP for its own address, IPv4 from its own address (or 0.0.0.0 for
  DHCP). IPv6 and every other ethertype from a guest are dropped: kasou networks are IPv4.
- `inet kasou`: per-network isolation, the host's services on the gateway, NAT, and the
  per-VM firewall. Bridges are created with `nf_call_iptables` on (per bridge, not the
  host-wide sysctl), so traffic between VMs on one bridge passes the inet hooks too and is
  connection-tracked: the kernel here has no nf_conntrack_bridge, and `ct state` needs it in
  the bridge family. The firewall therefore keys on the VM's IPv4 address, which the
  anti-spoofing rules make trustworthy.

Per-VM chains: `vmin-<tap>` (to the VM: allow -> accept, deny -> drop, default drop) and
`vmout-<tap>` (from it: allow -> return, deny -> drop, default return), so VM-to-VM traffic
is checked against the sender's outbound rules and then the receiver's inbound rules.
Replies (ct established/related) always pass.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from kasou.errors import EngineError
from kasou.store.network import NetworkRow, NicRow, RuleRow

TABLE = "kasou"
Expr = dict[str, Any]
Cmd = dict[str, Any]

ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}
RETURN: Expr = {"return": None}


@dataclass(frozen=True)
class Port:
    """One NIC on a host network, as the ruleset needs it."""

    nic: NicRow
    tap: str
    network: NetworkRow
    rules: tuple[RuleRow, ...] = field(default=())


# -- expression helpers ---------------------------------------------------------------------
def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def payload(protocol: str, name: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": name}}


def prefix(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


def vmap(key: Expr, pairs: list[tuple[str, str]]) -> Expr:
    return {"vmap": {"key": key, "data": {"set": [[k, jump(c)] for k, c in pairs]}}}


ESTABLISHED = match({"ct": {"key": "state"}}, ["established", "related"], "in")


class _Builder:
    def __init__(self, family: str, table: str) -> None:
        self.family = family
        self.table = table
        self.chains: list[Cmd] = []
        self.rules: list[Cmd] = []

    @property
    def cmds(self) -> list[Cmd]:
        """Chains first: a rule may only jump to a chain the transaction already made."""
        return self.chains + self.rules

    def chain(self, name: str, hook: str | None = None, prio: int = 0,
              kind: str = "filter") -> None:
        body: dict[str, Any] = {"family": self.family, "table": self.table, "name": name}
        if hook:
            body.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.chains.append({"add": {"chain": body}})

    def rule(self, chain: str, *expr: Expr) -> None:
        self.rules.append({"add": {"rule": {"family": self.family, "table": self.table,
                                           "chain": chain, "expr": list(expr)}}})


# -- the whole ruleset ------------------------------------------------------------------------
def build(networks: list[NetworkRow], ports: list[Port], table: str = TABLE) -> list[Cmd]:
    """Commands that replace both kasou tables; with no networks, they only remove them."""
    cmds: list[Cmd] = []
    for family in ("inet", "bridge"):
        ref = {"table": {"family": family, "name": table}}
        cmds += [{"add": ref}, {"delete": ref}]   # add first: delete of a missing table fails
    if not networks:
        return cmds
    for family in ("inet", "bridge"):
        cmds.append({"add": {"table": {"family": family, "name": table}}})
    cmds += _inet(networks, ports, table)
    cmds += _bridge(ports, table)
    return cmds


def _inet(networks: list[NetworkRow], ports: list[Port], table: str) -> list[Cmd]:
    b = _Builder("inet", table)
    for name, hook in (("input", "input"), ("output", "output"), ("forward", "forward")):
        b.chain(name, hook)
    b.chain("postrouting", "postrouting", 100, "nat")
    bridges = [n.bridge for n in networks]
    b.rule("input", vmap(meta("iifname"), [(br, f"in-{br}") for br in bridges]))
    b.rule("output", vmap(meta("oifname"), [(br, f"out-{br}") for br in bridges]))
    b.rule("forward", vmap(meta("iifname"), [(br, f"from-{br}") for br in bridges]))
    b.rule("forward", vmap(meta("oifname"), [(br, f"to-{br}") for br in bridges]))
    for net in networks:
        mine = [p for p in ports if p.network.id == net.id]
        others = [br for br in bridges if br != net.bridge]
        _network_chains(b, net, mine, others)
    for port in ports:
        _vm_chains(b, port)
    return b.cmds


def _network_chains(b: _Builder, net: NetworkRow, ports: list[Port], others: list[str]) -> None:
    br, gw = net.bridge, net.gateway
    vm_out = [(p.nic.ip, f"vmout-{p.tap}") for p in ports]
    vm_in = [(p.nic.ip, f"vmin-{p.tap}") for p in ports]
    saddr, daddr = payload("ip", "saddr"), payload("ip", "daddr")

    # VM -> host: DHCP always; then the VM's outbound rules; then only the gateway's services.
    b.chain(f"in-{br}")
    b.rule(f"in-{br}", match(payload("udp", "dport"), 67), ACCEPT)
    b.rule(f"in-{br}", ESTABLISHED, ACCEPT)
    if vm_out:
        b.rule(f"in-{br}", vmap(saddr, vm_out))
    for proto in ("udp", "tcp"):
        b.rule(f"in-{br}", match(daddr, gw), match(payload(proto, "dport"), 53), ACCEPT)
    b.rule(f"in-{br}", match(daddr, gw), match(meta("l4proto"), "icmp"), ACCEPT)
    if net.mode == "nat":
        b.rule(f"in-{br}", match(daddr, gw), ACCEPT)
    b.rule(f"in-{br}", DROP)

    # host -> VM: DHCP replies, replies, then the VM's inbound rules.
    b.chain(f"out-{br}")
    b.rule(f"out-{br}", match(payload("udp", "sport"), 67), match(payload("udp", "dport"), 68),
           ACCEPT)
    b.rule(f"out-{br}", ESTABLISHED, ACCEPT)
    if vm_in:
        b.rule(f"out-{br}", vmap(daddr, vm_in))

    # Forwarded (routed, or bridged between two VMs): never to or from another kasou network.
    b.chain(f"from-{br}")
    b.chain(f"to-{br}")
    if others:
        b.rule(f"from-{br}", match(meta("oifname"), {"set": others}), DROP)
        b.rule(f"to-{br}", match(meta("iifname"), {"set": others}), DROP)
    if net.mode == "isolated":
        b.rule(f"from-{br}", match(meta("oifname"), br, "!="), DROP)
        b.rule(f"to-{br}", match(meta("iifname"), br, "!="), DROP)
    for chain in (f"from-{br}", f"to-{br}"):
        b.rule(chain, ESTABLISHED, ACCEPT)
    if vm_out:
        b.rule(f"from-{br}", vmap(saddr, vm_out))
    if vm_in:
        b.rule(f"to-{br}", vmap(daddr, vm_in))
    b.rule(f"to-{br}", match(daddr, prefix(net.subnet)), DROP)   # no such VM

    if net.mode == "nat":
        b.rule("postrouting", match(saddr, prefix(net.subnet)),
               match(meta("oifname"), br, "!="),
               match(daddr, {"set": [prefix("224.0.0.0/4"), "255.255.255.255"]}, "!="),
               {"masquerade": None})


def _vm_chains(b: _Builder, port: Port) -> None:
    vin, vout = f"vmin-{port.tap}", f"vmout-{port.tap}"
    b.chain(vin)
    b.chain(vout)
    for rule in port.rules:
        if rule.direction == "in":
            b.rule(vin, *rule_match(rule, "saddr"), ACCEPT if rule.action == "allow" else DROP)
        else:
            b.rule(vout, *rule_match(rule, "daddr"), RETURN if rule.action == "allow" else DROP)
    b.rule(vin, DROP)       # inbound: denied unless a rule allows it (replies passed before)
    b.rule(vout, RETURN)    # outbound: allowed unless a rule denies it


def rule_match(rule: RuleRow, peer: str) -> list[Expr]:
    out: list[Expr] = []
    if rule.cidr != "0.0.0.0/0":
        out.append(match(payload("ip", peer), prefix(rule.cidr)))
    if rule.protocol != "any":
        out.append(match(meta("l4proto"), rule.protocol))
    if rule.port_min is not None and rule.protocol in ("tcp", "udp"):
        hi = rule.port_max if rule.port_max is not None else rule.port_min
        ports: Any = rule.port_min if hi == rule.port_min else {"range": [rule.port_min, hi]}
        out.append(match(payload(rule.protocol, "dport"), ports))
    return out


def _bridge(ports: list[Port], table: str) -> list[Cmd]:
    b = _Builder("bridge", table)
    b.chain("prerouting", "prerouting", -200)
    if ports:
        b.rule("prerouting", vmap(meta("iifname"), [(p.tap, f"port-{p.tap}") for p in ports]))
    for p in ports:
        c, mac, ip = f"port-{p.tap}", p.nic.mac, p.nic.ip
        b.chain(c)
        b.rule(c, match(payload("ether", "saddr"), mac, "!="), DROP)
        b.rule(c, match(payload("arp", "saddr ether"), mac, "!="), DROP)
        b.rule(c, match(payload("arp", "saddr ip"), {"set": [ip, "0.0.0.0"]}, "!="), DROP)
        b.rule(c, match(payload("ether", "type"), "arp"), ACCEPT)
        b.rule(c, match(payload("ip", "saddr"), ip), ACCEPT)
        b.rule(c, match(payload("ip", "saddr"), "0.0.0.0"), match(payload("udp", "sport"), 68),
               match(payload("udp", "dport"), 67), ACCEPT)
        b.rule(c, DROP)
    return b.cmds


# -- applying ----------------------------------------------------------------------------------
def nft_binary() -> str:
    # /usr/sbin is not on every PATH (a user's shell, sudo without secure_path).
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise EngineError("host networks need nftables: `nft` is not installed "
                          "(apt-get install nftables)")
    return path


def apply(cmds: list[Cmd]) -> None:
    """Run the commands as one transaction: all or nothing."""
    doc = json.dumps({"nftables": cmds})
    try:
        proc = subprocess.run([nft_binary(), "-j", "-f", "-"], input=doc, text=True,
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"nft failed: {e}") from e
    if proc.returncode != 0:
        raise EngineError(f"nft refused kasou's rules: {proc.stderr.strip()[:2000]}")


def tables(table: str = TABLE) -> list[str]:
    """Families that have a table of this name now (for checks and tests)."""
    try:
        proc = subprocess.run([nft_binary(), "-j", "list", "tables"], capture_output=True,
                              text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise EngineError(f"nft list tables failed: {e}") from e
    items = json.loads(proc.stdout or '{"nftables": []}')["nftables"]
    return sorted(i["table"]["family"] for i in items
                  if "table" in i and i["table"]["name"] == table)
