"""`kasou network ...` and `kasou secgroup ...`: host networks, NIC limits, security groups."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call, fail
from kasou.cli.output import print_fields, print_json, print_table

network_app = typer.Typer(help="Host networks: a bridge with DHCP/DNS, NAT or isolated.",
                          no_args_is_help=True)
secgroup_app = typer.Typer(help="Security groups: per-VM firewall rules, applied live.",
                           no_args_is_help=True)


def _show_network(net: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(net)
        return
    print_fields({"name": net["name"], "subnet": net["subnet"], "gateway": net["gateway"],
                  "mode": net["mode"], "bridge": net["bridge"],
                  "bridge up": "yes" if net["bridge_up"] else "no",
                  "dnsmasq pid": net.get("dnsmasq_pid"), "vms": ", ".join(net["vms"])})


@network_app.command("create")
def network_create(
    name: str,
    subnet: str = typer.Option(..., help="IPv4 subnet, e.g. 10.10.0.0/24; the host is .1."),
    nat: bool = typer.Option(False, "--nat", help="NAT to the outside (the default)."),
    isolated: bool = typer.Option(False, "--isolated",
                                  help="VMs reach each other and DHCP/DNS only."),
    as_json: bool = JsonOpt,
) -> None:
    """Create a network: a Linux bridge NAME with DHCP/DNS (needs a root daemon)."""
    if nat and isolated:
        fail("mode: choose --nat or --isolated, not both")
    body = {"name": name, "subnet": subnet, "mode": "isolated" if isolated else "nat"}
    _show_network(call(Client().post, "/networks", body), as_json)


@network_app.command("list")
def network_list(as_json: bool = JsonOpt) -> None:
    """List networks."""
    nets = call(Client().get, "/networks")
    if as_json:
        print_json(nets)
        return
    print_table(["NAME", "SUBNET", "MODE", "BRIDGE", "VMS"],
                [[n["name"], n["subnet"], n["mode"], n["bridge"], len(n["vms"])] for n in nets])


@network_app.command("show")
def network_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show one network."""
    _show_network(call(Client().get, f"/networks/{name}"), as_json)


@network_app.command("delete")
def network_delete(name: str) -> None:
    """Delete a network nobody uses: its bridge, dnsmasq, leases and rules go."""
    call(Client().delete, f"/networks/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@network_app.command("limit")
def network_limit(
    vm: str,
    inbound: str | None = typer.Option(None, "--in", help="To the guest, e.g. 10mbit; "
                                       "'none' for no limit."),
    outbound: str | None = typer.Option(None, "--out", help="From the guest, e.g. 5mbit."),
    nic: int = typer.Option(0, help="The NIC's index."),
    as_json: bool = JsonOpt,
) -> None:
    """Set a NIC's bandwidth limits, live (host-network NICs)."""
    got = call(Client().put, f"/vms/{vm}/nics/{nic}/limits",
               {"inbound": inbound, "outbound": outbound})
    if as_json:
        print_json(got)
    else:
        sys.stdout.write(f"{vm} nic{nic}: in {got.get('inbound') or 'unlimited'}, "
                         f"out {got.get('outbound') or 'unlimited'}\n")


def _show_group(group: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(group)
        return
    print_fields({"name": group["name"], "description": group["description"],
                  "vms": ", ".join(group["vms"])})
    if group["rules"]:
        print_table(["ID", "PRIO", "DIR", "PROTO", "PORTS", "CIDR", "ACTION"],
                    [[r["id"], r["priority"], r["direction"], r["protocol"], r.get("ports"),
                      r["cidr"], r["action"]] for r in group["rules"]])


@secgroup_app.command("create")
def secgroup_create(name: str, description: str = typer.Option("", help="One line."),
                    as_json: bool = JsonOpt) -> None:
    """Create an empty security group (attached, it denies inbound except replies)."""
    _show_group(call(Client().post, "/secgroups", {"name": name,
                                                   "description": description}), as_json)


@secgroup_app.command("list")
def secgroup_list(as_json: bool = JsonOpt) -> None:
    """List security groups."""
    groups = call(Client().get, "/secgroups")
    if as_json:
        print_json(groups)
        return
    print_table(["NAME", "RULES", "VMS", "DESCRIPTION"],
                [[g["name"], len(g["rules"]), ", ".join(g["vms"]), g["description"]]
                 for g in groups])


@secgroup_app.command("show")
def secgroup_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show a security group and its rules."""
    _show_group(call(Client().get, f"/secgroups/{name}"), as_json)


@secgroup_app.command("delete")
def secgroup_delete(name: str) -> None:
    """Delete a security group attached to no VM."""
    call(Client().delete, f"/secgroups/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@secgroup_app.command("rule-add")
def secgroup_rule_add(
    name: str,
    direction: str = typer.Option(..., "--direction", "-d", help="in or out."),
    protocol: str = typer.Option("any", help="tcp, udp, icmp or any."),
    port: str | None = typer.Option(None, "--port", help="A port or range: 80, 8000-8100."),
    cidr: str = typer.Option("0.0.0.0/0", help="The other side: source (in), "
                             "destination (out)."),
    action: str = typer.Option("allow", help="allow or deny."),
    priority: int = typer.Option(1000, help="Lower is checked first; first match wins."),
    as_json: bool = JsonOpt,
) -> None:
    """Add a rule; it applies at once to every VM the group is attached to."""
    body = {"direction": direction, "protocol": protocol, "ports": port, "cidr": cidr,
            "action": action, "priority": priority}
    _show_group(call(Client().post, f"/secgroups/{name}/rules", body), as_json)


@secgroup_app.command("rule-delete")
def secgroup_rule_delete(name: str, rule_id: int, as_json: bool = JsonOpt) -> None:
    """Delete a rule by its id (see `kasou secgroup show`)."""
    _show_group(call(Client().delete, f"/secgroups/{name}/rules/{rule_id}"), as_json)


@secgroup_app.command("attach")
def secgroup_attach(name: str, vm: str, as_json: bool = JsonOpt) -> None:
    """Attach a group to a VM (running or not); its rules apply at once."""
    _show_group(call(Client().post, f"/secgroups/{name}/attach", {"vm": vm}), as_json)


@secgroup_app.command("detach")
def secgroup_detach(name: str, vm: str, as_json: bool = JsonOpt) -> None:
    """Detach a group from a VM."""
    _show_group(call(Client().post, f"/secgroups/{name}/detach", {"vm": vm}), as_json)


def vm_network_spec(forwards: list[str], networks: list[str], ips: list[str],
                    macs: list[str]) -> dict[str, Any]:
    """The network part of `kasou vm create`: --ip/--mac go to the --network of the same
    position (the first --ip to the first --network)."""
    if len(ips) > len(networks) or len(macs) > len(networks):
        fail("nics: every --ip and --mac needs its own --network")
    out: dict[str, Any] = {}
    if forwards:
        out["forwards"] = list(forwards)
    if networks:
        nics = []
        for i, net in enumerate(networks):
            nic: dict[str, Any] = {"network": net}
            if i < len(ips):
                nic["ip"] = ips[i]
            if i < len(macs):
                nic["mac"] = macs[i]
            nics.append(nic)
        out["nics"] = nics
    return out


def nic_lines(extras: dict[str, Any]) -> dict[str, str]:
    """`kasou vm show` lines for the network hook's facts."""
    facts = extras.get("network") or {}
    lines: dict[str, str] = {}
    for nic in facts.get("nics", []):
        words = [nic["kind"], nic["mac"]]
        if nic.get("network"):
            words.append(f"network {nic['network']}")
        if nic.get("ip"):
            words.append(f"ip {nic['ip']}")
        if nic.get("tap"):
            words.append(f"tap {nic['tap']}")
        for key in ("inbound", "outbound"):
            if nic.get(key):
                words.append(f"{key} {nic[key]}")
        lines[f"nic{nic['index']}"] = "  ".join(words)
        if nic.get("forwards"):
            lines["forwards"] = ", ".join(nic["forwards"])
    if "secgroups" in facts:
        lines["secgroups"] = ", ".join(facts["secgroups"]) or "(none: inbound denied)"
    return lines
