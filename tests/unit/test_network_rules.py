"""The pure parts of host networks: the nftables ruleset, dnsmasq's config, the tap argv,
and the network tables' constraints."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kasou.engine import argv
from kasou.engine.plan import LaunchPlan, NicPlan, RunPaths
from kasou.errors import Conflict
from kasou.network import dnsmasq, nft
from kasou.store.network import NetworkRow, NetworkStore, NicRow, RuleRow, SecGroupRow
from kasou.store.sqlite import SQLiteStore

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

NET_A = NetworkRow(id="na", name="lan", subnet="10.5.0.0/24", gateway="10.5.0.1", mode="nat",
                   bridge="lan", created_at="t")
NET_B = NetworkRow(id="nb", name="iso", subnet="10.6.0.0/24", gateway="10.6.0.1",
                   mode="isolated", bridge="iso", created_at="t")
NIC = NicRow(id="c1", vm_id="aaaaaaaaaaaa", idx=0, network_id="na", mac="52:54:00:00:00:01",
             ip="10.5.0.2")


def rule(rid: int, direction: str, action: str, **kw: Any) -> RuleRow:
    base: dict[str, Any] = {"protocol": "any", "port_min": None, "port_max": None,
                            "cidr": "0.0.0.0/0", "priority": 1000}
    return RuleRow(id=rid, secgroup_id="s", direction=direction, action=action, **{**base, **kw})


def chain_rules(cmds: list[dict[str, Any]], family: str, chain: str) -> list[str]:
    """Each rule of a chain as compact JSON, in order."""
    return [json.dumps(c["add"]["rule"]["expr"]) for c in cmds
            if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == family
            and c["add"]["rule"]["chain"] == chain]


def test_no_networks_only_removes_the_tables() -> None:
    cmds = nft.build([], [])
    assert cmds == [{"add": {"table": {"family": f, "name": "kasou"}}} if i % 2 == 0 else
                    {"delete": {"table": {"family": f, "name": "kasou"}}}
                    for f in ("inet", "bridge") for i in range(2)]


def test_tables_are_replaced_whole_and_chains_come_first() -> None:
    port = nft.Port(nic=NIC, tap="ktaaaaaaaaaaaa0", network=NET_A)
    cmds = nft.build([NET_A, NET_B], [port])
    assert [next(iter(c)) for c in cmds[:4]] == ["add", "delete", "add", "delete"]
    for family in ("inet", "bridge"):   # within a table, a jump needs its chain made first
        kinds = [next(iter(c["add"])) for c in cmds[4:]
                 if next(iter(c["add"].values()))["family"] == family]
        assert kinds[0] == "table"
        assert kinds[1:] == sorted(kinds[1:], key=lambda k: k == "rule")


def test_anti_spoofing_on_the_tap() -> None:
    port = nft.Port(nic=NIC, tap="ktaaaaaaaaaaaa0", network=NET_A)
    rules = chain_rules(nft.build([NET_A], [port]), "bridge", "port-ktaaaaaaaaaaaa0")
    assert '"saddr"' in rules[0] and '"!="' in rules[0] and NIC.mac in rules[0]
    assert "saddr ether" in rules[1] and "saddr ip" in rules[2] and "0.0.0.0" in rules[2]
    assert rules[-1] == '[{"drop": null}]'     # IPv6, VLAN tags and anything else
    prerouting = chain_rules(nft.build([NET_A], [port]), "bridge", "prerouting")
    assert "ktaaaaaaaaaaaa0" in prerouting[0] and "vmap" in prerouting[0]


def test_isolation_between_networks_and_isolated_mode() -> None:
    cmds = nft.build([NET_A, NET_B], [])
    assert any('"iso"' in r and "drop" in r for r in chain_rules(cmds, "inet", "from-lan"))
    assert any('"lan"' in r and "drop" in r for r in chain_rules(cmds, "inet", "to-iso"))
    iso_out = chain_rules(cmds, "inet", "from-iso")
    assert any('"!="' in r and '"iso"' in r and "drop" in r for r in iso_out)
    masq = chain_rules(cmds, "inet", "postrouting")
    assert len(masq) == 1 and "10.5.0.0" in masq[0] and "masquerade" in masq[0]
    assert chain_rules(cmds, "inet", "in-iso")[-1] == '[{"drop": null}]'


def test_vm_rules_in_order_with_defaults() -> None:
    rules = (rule(1, "in", "deny", protocol="tcp", port_min=22, port_max=22,
                  cidr="10.0.0.0/8", priority=10),
             rule(2, "in", "allow", protocol="tcp", port_min=8000, port_max=8100),
             rule(3, "out", "deny", protocol="icmp"),
             rule(4, "out", "allow", cidr="10.5.0.9/32"))
    port = nft.Port(nic=NIC, tap="ktaaaaaaaaaaaa0", network=NET_A, rules=rules)
    cmds = nft.build([NET_A], [port])
    vin = chain_rules(cmds, "inet", "vmin-ktaaaaaaaaaaaa0")
    assert "10.0.0.0" in vin[0] and '"right": 22' in vin[0] and vin[0].endswith('{"drop": null}]')
    assert '"range": [8000, 8100]' in vin[1] and vin[1].endswith('{"accept": null}]')
    assert vin[-1] == '[{"drop": null}]'                 # inbound: denied by default
    vout = chain_rules(cmds, "inet", "vmout-ktaaaaaaaaaaaa0")
    assert "icmp" in vout[0] and vout[0].endswith('{"drop": null}]')
    assert '"10.5.0.9"' in vout[1] and vout[1].endswith('{"return": null}]')
    assert vout[-1] == '[{"return": null}]'              # outbound: allowed by default
    # Replies pass before any VM rule, in both directions.
    for chain in ("from-lan", "to-lan", "in-lan", "out-lan"):
        assert any("established" in r for r in chain_rules(cmds, "inet", chain))


def test_dnsmasq_config() -> None:
    files = dnsmasq.Files(Path("/data/networks/na"))
    hosts = [dnsmasq.Host("52:54:00:00:00:01", "10.5.0.2", "web"),
             dnsmasq.Host("52:54:00:00:00:02", "10.5.0.3", "bad_name")]
    text = dnsmasq.config(NET_A, hosts, files)
    assert "interface=lan\n" in text and "listen-address=10.5.0.1\n" in text
    assert "dhcp-range=10.5.0.0,static,255.255.255.0,1h" in text
    assert "dhcp-leasefile=/data/networks/na/leases" in text
    assert "dhcp-host=52:54:00:00:00:01,10.5.0.2,web\n" in text
    assert "dhcp-host=52:54:00:00:00:02,10.5.0.3\n" in text      # not a DNS label: no name
    assert "no-resolv" not in text
    iso = dnsmasq.config(NET_B, [], files)
    assert "no-resolv" in iso and "dhcp-option=option:router\n" in iso


def test_tap_nic_argv_golden() -> None:
    run = "/var/lib/kasou/vms/vm-1"
    plan = LaunchPlan(vm_id="vm-1", name="web", machine="microvm", accel="tcg", vcpus=1,
                      memory_mib=256, kernel="/k", initrd="/i", cmdline="console=ttyS0",
                      paths=RunPaths(qmp=f"{run}/qmp.sock", console=f"{run}/console.sock",
                                     serial_log=f"{run}/serial.log", pidfile=f"{run}/pid"),
                      nics=(NicPlan("52:54:00:00:00:09", kind="tap", ifname="kt0123456789ab0"),))
    args = argv.nic_args(plan) + argv.nic_args(dataclasses.replace(plan, machine="pc"))
    got = "\n".join(args) + "\n"
    path = GOLDEN / "network-tap-nics.argv"
    if os.environ.get("KASOU_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert got == path.read_text()


def test_store_constraints(tmp_path: Path) -> None:
    db = NetworkStore(SQLiteStore(tmp_path / "k.db"))
    db.add_network(NET_A)
    with pytest.raises(Conflict, match="already exists"):
        db.add_network(NET_A.model_copy(update={"id": "other"}))
    db.add_nic(NIC)
    for clash in ({"id": "c2", "vm_id": "b" * 12},                                   # MAC
                  {"id": "c3", "vm_id": "c" * 12, "mac": "52:54:00:00:00:02"}):     # address
        with pytest.raises(Conflict):
            db.add_nic(NIC.model_copy(update=clash))
    sg1 = SecGroupRow(id="s1", name="a", description="", created_at="t")
    sg2 = SecGroupRow(id="s2", name="b", description="", created_at="t")
    db.add_secgroup(sg1)
    db.add_secgroup(sg2)
    base = {"direction": "in", "protocol": "any", "port_min": None, "port_max": None,
            "cidr": "0.0.0.0/0", "action": "allow"}
    r1 = db.add_rule(sg1, {**base, "priority": 100})
    r2 = db.add_rule(sg2, {**base, "priority": 5})
    r3 = db.add_rule(sg1, {**base, "priority": 100})
    db.attach("default", NIC.vm_id, "s1")
    db.attach("default", NIC.vm_id, "s2")
    assert [r.id for r in db.vm_rules(NIC.vm_id)] == [r2, r1, r3]
    db.detach_all(NIC.vm_id)
    db.delete_secgroup("s2")          # its rules go with it
    assert db.vm_rules(NIC.vm_id) == [] and db.rules("s2") == []
