"""Networking with real guests: user-mode forwards; host networks (bridge, dnsmasq, NAT)
with isolation, the per-VM firewall applied live, anti-spoofing, bandwidth limits, a daemon
restart that finds host state gone, and a cleanup that leaves nothing.

Host-network tests run the daemon (and so QEMU, dnsmasq, the bridges and the rules) in a
network namespace of their own, linked only to an "outside" namespace that plays the
internet (netenv.py): no packet can leave this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ARTIFACTS, Kasou, booted, wait_for
from tests.integration.netenv import (
    OUTSIDE_IP,
    UPLINK_IP,
    NetEnv,
    boot_all,
    fails,
    free_port,
    guest,
    http_get,
    http_server,
    ok,
    read_lines,
    udp_listener,
    wait_ip,
)


@pytest.fixture
def netk(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
         images: dict[str, Any]) -> Iterator[tuple[Kasou, NetEnv]]:
    """A daemon in a network namespace of its own; everything is removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("host networks need root (bridges, TAPs, nftables)")
    env = NetEnv()
    env.create()
    k = Kasou(tmp_path_factory.mktemp("nethome"))
    k.prefix = env.exec()
    try:
        k.start_daemon()
        yield k, env
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            dest = ARTIFACTS / request.node.name
            dest.mkdir(parents=True, exist_ok=True)
            for log in [*k.home.glob("vms/*/serial.log"), *k.home.glob("networks/*/*.log"),
                        k.home / "kasoud.log"]:
                with contextlib.suppress(FileNotFoundError):
                    shutil.copy(log, dest / f"{log.parent.name}-{log.name}")
            with contextlib.suppress(Exception):
                (dest / "nft.txt").write_text(env.run("nft", "list", "ruleset").stdout)
        k.cleanup()
        env.destroy()


def nic(vm: dict[str, Any], index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = vm["extras"]["network"]["nics"][index]
    return found


# -- user-mode NAT ------------------------------------------------------------------------------
def test_user_nat_forwards_and_taken_ports(kasou: Kasou) -> None:
    port = free_port()
    vm = booted(kasou, "fwd", "--image", "tiny", "--forward", f"{port}:8080")
    assert nic(vm)["kind"] == "user"
    assert nic(vm)["forwards"] == [f"127.0.0.1:{port} -> 8080/tcp"]
    assert f"127.0.0.1:{port} -> 8080/tcp" in kasou.run("vm", "show", "fwd").stdout
    ok(vm, "mkdir -p /www && echo hello-through-slirp > /www/index.html && httpd -p 8080 -h /www")

    def fetch() -> str | None:
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return str(r.read().decode())
        return None

    assert "hello-through-slirp" in wait_for(fetch, 30, "the guest's httpd through the forward")
    # Bound to loopback only: the listening socket's address is 127.0.0.1.
    assert _listen_addresses(port) == ["127.0.0.1"]

    # The same host port for another VM: refused at create, nothing made.
    r = kasou.run("vm", "create", "fwd2", "--image", "tiny", "--forward", f"{port}:22",
                  check=False)
    assert r.returncode == 1 and "already forwarded to VM 'fwd'" in r.stderr, r.stderr
    assert kasou.run("vm", "show", "fwd2", check=False).returncode == 1
    # A port some other program holds: refused at create...
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        r = kasou.run("vm", "create", "fwd3", "--image", "tiny", "--forward", f"{busy}:22",
                      check=False)
        assert r.returncode == 1 and "is already taken" in r.stderr, r.stderr
    # ...and at start, when it was taken after the VM was defined.
    later = free_port()
    kasou.run("vm", "create", "fwd4", "--image", "tiny", "--forward", f"{later}:22/tcp")
    with socket.socket() as held:
        held.bind(("127.0.0.1", later))
        held.listen()
        r = kasou.run("vm", "start", "fwd4", check=False)
        assert r.returncode == 1 and f"127.0.0.1:{later}/tcp is already taken" in r.stderr
    assert kasou.vm("fwd4")["state"] == "stopped" and kasou.vm("fwd4")["pid"] is None
    # Bad syntax names the field.
    r = kasou.run("vm", "create", "bad", "--image", "tiny", "--forward", "22", check=False)
    assert r.returncode == 1 and "forwards" in r.stderr and "HOSTPORT:GUESTPORT" in r.stderr


def _listen_addresses(port: int) -> list[str]:
    """IPv4 addresses listening on the TCP port, from /proc/net/tcp (state 0A: LISTEN)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hexport = local.partition(":")
        if state == "0A" and int(hexport, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


# -- host networks -------------------------------------------------------------------------------
def test_networks_nat_isolation_and_bad_input(netk: tuple[Kasou, NetEnv]) -> None:
    k, env = netk
    k.run("network", "create", "neta", "--subnet", "10.251.1.0/24")
    k.run("network", "create", "netb", "--subnet", "10.251.2.0/24", "--nat")
    # Bad input: clear errors, nothing half-created.
    for args, expect in [
        (("netc", "--subnet", "10.251.1.128/25"), "overlaps network 'neta'"),
        (("up0", "--subnet", "10.251.9.0/24"), "host interface named 'up0'"),
        (("netd", "--subnet", "198.51.100.0/25"), "on host interface up0"),
        (("nete", "--subnet", "10.251.3.1/24"), "subnet"),
        (("a-name-longer-than-15", "--subnet", "10.251.4.0/24"), "1-15 letters"),
    ]:
        r = k.run("network", "create", *args, check=False)
        assert r.returncode == 1 and expect in r.stderr, (args, r.stderr)
    assert [n["name"] for n in k.json("network", "list")] == ["neta", "netb"]
    assert not {"netc", "netd", "nete"} & set(env.links())

    k.run("secgroup", "create", "open")
    k.run("secgroup", "rule-add", "open", "--direction", "in")   # isolation alone must block
    a1, a2, b1 = boot_all(k, ("a1", "--network", "neta", "--ip", "10.251.1.10"),
                          ("a2", "--network", "neta"),
                          ("b1", "--network", "netb", "--ip", "10.251.2.10"))
    for name in ("a1", "a2", "b1"):
        k.run("secgroup", "attach", "open", name)
    a2_ip = nic(k.vm("a2"))["ip"]
    assert a2_ip == "10.251.1.2"      # the lowest free address
    for vm, ip in ((a1, "10.251.1.10"), (a2, a2_ip), (b1, "10.251.2.10")):
        wait_ip(vm, ip)

    # Reserved addresses and MACs are refused twice.
    r = k.run("vm", "create", "dup", "--image", "tiny", "--network", "neta", "--ip",
              "10.251.1.10", check=False)
    assert r.returncode == 1 and "10.251.1.10 is already reserved" in r.stderr
    r = k.run("vm", "create", "dup", "--image", "tiny", "--network", "neta", "--mac",
              nic(k.vm("a1"))["mac"], check=False)
    assert r.returncode == 1 and "already used by another NIC" in r.stderr
    r = k.run("vm", "create", "dup", "--image", "tiny", "--network", "neta", "--ip",
              "10.251.2.50", check=False)
    assert r.returncode == 1 and "not in the network's subnet" in r.stderr
    assert k.run("vm", "show", "dup", check=False).returncode == 1

    # Same network: both ways.
    ok(a1, f"ping -c 2 -W 3 {a2_ip}")
    ok(a2, "ping -c 2 -W 3 10.251.1.10")
    # The outside through NAT: the server sees the host's uplink address, not the VM's.
    http_server(env, OUTSIDE_IP, 8000, env.outside)
    page = ok(a1, http_get(OUTSIDE_IP, 8000))
    assert f"you are {UPLINK_IP}" in page
    assert f"you are {UPLINK_IP}" in ok(b1, http_get(OUTSIDE_IP, 8000))
    # Another network: neither way, not even its gateway.
    fails(b1, "ping -c 2 -W 2 10.251.1.10")
    fails(b1, f"ping -c 2 -W 2 {a2_ip}")
    fails(a1, "ping -c 2 -W 2 10.251.2.10")
    fails(b1, "ping -c 1 -W 2 10.251.1.1")
    # A network in use cannot go.
    r = k.run("network", "delete", "neta", check=False)
    assert r.returncode == 1 and "used by VM(s) a1, a2" in r.stderr


def test_firewall_live_and_anti_spoofing(netk: tuple[Kasou, NetEnv]) -> None:
    k, env = netk
    k.run("network", "create", "neta", "--subnet", "10.252.1.0/24")
    v1, v2 = boot_all(k, ("v1", "--network", "neta", "--ip", "10.252.1.10"),
                      ("v2", "--network", "neta", "--ip", "10.252.1.20"))
    k.run("secgroup", "create", "web")
    k.run("secgroup", "attach", "web", "v1")
    wait_ip(v1, "10.252.1.10")
    wait_ip(v2, "10.252.1.20")
    ok(v1, "mkdir -p /www && echo fw-ok > /www/index.html && httpd -p 8080 -h /www")
    fetch = http_get("10.252.1.10", 8080)

    fails(v2, fetch)                                  # inbound denied by default
    k.run("secgroup", "rule-add", "web", "-d", "in", "--protocol", "tcp", "--port", "8080")
    assert "fw-ok" in ok(v2, fetch)                   # allowed, live
    k.run("secgroup", "rule-add", "web", "-d", "in", "--protocol", "tcp", "--port",
          "8000-8100", "--cidr", "10.252.1.20/32", "--action", "deny", "--priority", "10")
    fails(v2, fetch)                                  # a deny that comes first
    deny = [r for r in k.json("secgroup", "show", "web")["rules"] if r["action"] == "deny"]
    k.run("secgroup", "rule-delete", "web", str(deny[0]["id"]))
    assert "fw-ok" in ok(v2, fetch)
    k.run("secgroup", "create", "noout")
    k.run("secgroup", "rule-add", "noout", "-d", "out", "--protocol", "tcp", "--port", "8080",
          "--action", "deny")
    k.run("secgroup", "attach", "noout", "v2")
    fails(v2, fetch)                                  # the sender's outbound rule
    k.run("secgroup", "detach", "noout", "v2")
    assert "fw-ok" in ok(v2, fetch)
    assert k.vm("v1")["pid"] == v1["pid"] and k.vm("v2")["pid"] == v2["pid"]  # never restarted

    # Anti-spoofing: UDP to a listener on the gateway, from v2's own address, then from v1's
    # address, then with v1's MAC. Only the first may arrive.
    listener = udp_listener(env, "10.252.1.1", 6969)
    send = "timeout 3 tftp -g -r x -l /tmp/x 10.252.1.1 6969; true"
    ok(v2, send)
    assert "FROM 10.252.1.20" in read_lines(listener, 2)
    ok(v2, "ip addr add 10.252.1.10/32 dev eth0 && "
           "ip route add 10.252.1.1/32 dev eth0 src 10.252.1.10")
    ok(v2, send)
    ok(v2, "ip route del 10.252.1.1/32 dev eth0; ip addr del 10.252.1.10/32 dev eth0")
    assert read_lines(listener, 2) == [], "a datagram from a spoofed address got through"
    v1_mac, v2_mac = nic(k.vm("v1"))["mac"], nic(k.vm("v2"))["mac"]
    ok(v2, f"ip link set eth0 address {v1_mac}")
    ok(v2, send)
    ok(v2, f"ip link set eth0 address {v2_mac}")
    assert read_lines(listener, 2) == [], "a frame with another VM's MAC got through"
    ok(v2, send)
    assert "FROM 10.252.1.20" in read_lines(listener, 2)   # v2 itself still gets through


def test_limits_restart_and_cleanup(netk: tuple[Kasou, NetEnv]) -> None:
    k, env = netk
    k.run("network", "create", "neta", "--subnet", "10.253.1.0/24")
    k.run("secgroup", "create", "open")
    k.run("secgroup", "rule-add", "open", "--direction", "in")
    sender, receiver = boot_all(k, ("tx", "--network", "neta", "--ip", "10.253.1.10"),
                                ("rx", "--network", "neta", "--ip", "10.253.1.20"))
    k.run("secgroup", "attach", "open", "rx")
    wait_ip(sender, "10.253.1.10")
    wait_ip(receiver, "10.253.1.20")
    tap = nic(receiver)["tap"]

    # Limits, live: the kernel shapes the TAP, and a transfer cannot beat the rate.
    k.run("network", "limit", "rx", "--in", "256kbit", "--out", "2mbit")
    assert nic(k.vm("rx"))["inbound"] == "256kbit" and nic(k.vm("rx"))["outbound"] == "2mbit"
    assert _tbf_rate(env, tap) == 256_000
    assert _tbf_rate(env, "kb" + tap[2:]) == 2_000_000
    seconds = _receive_seconds(sender, receiver, 256)
    # 256 KiB at 256 kbit/s, less the 32 KiB bucket: at least 7 s; unlimited it takes
    # well under one second here.
    assert seconds >= 6.5, f"256 KiB arrived in {seconds:.2f}s through a 256kbit limit"
    k.run("network", "limit", "rx", "--in", "none", "--out", "none")
    assert _tbf_rate(env, tap) is None and "kb" + tap[2:] not in env.links()
    k.run("network", "limit", "rx", "--in", "512kbit")

    # The daemon dies and the host loses its network state meanwhile.
    net_dir = next((k.home / "networks").glob("*/dnsmasq.pid")).parent
    old_dnsmasq = int((net_dir / "dnsmasq.pid").read_text())
    k.kill_daemon()
    ok(sender, "ping -c 2 -W 3 10.253.1.20")      # the VMs' network does not need the daemon
    env.run("ip", "link", "del", "neta")
    env.run("nft", "delete", "table", "inet", "kasou")
    os.kill(old_dnsmasq, 9)
    env.run("tc", "qdisc", "del", "dev", tap, "root")
    fails(sender, "ping -c 1 -W 2 10.253.1.20")
    k.start_daemon()
    assert k.vm("tx")["pid"] == sender["pid"] and k.vm("rx")["pid"] == receiver["pid"]
    assert "neta" in env.links() and "inet kasou" in env.nft_tables()
    assert _tbf_rate(env, tap) == 512_000
    ok(sender, "ping -c 2 -W 3 10.253.1.20")
    assert k.json("network", "show", "neta")["dnsmasq_pid"] not in (None, old_dnsmasq)
    ok(receiver, "udhcpc -n -q -i eth0 -s /etc/kasou/udhcpc.script")   # DHCP answers again

    # Cleanup: nothing of kasou's is left in the namespace.
    leases = net_dir / "leases"
    tx_mac = nic(sender)["mac"]
    assert tx_mac in leases.read_text()
    k.run("vm", "stop", "tx")
    k.run("vm", "delete", "tx")
    assert tx_mac not in leases.read_text()          # a deleted VM's lease goes with it
    assert nic(sender)["tap"] not in env.links()
    k.run("vm", "stop", "rx")
    k.run("vm", "delete", "rx")
    k.run("secgroup", "delete", "open")
    k.run("network", "delete", "neta")
    assert env.links() == ["lo", "up0"]
    assert env.nft_tables() == []
    assert k.daemon is not None and env.pids() == [k.daemon.pid]
    assert not any((k.home / "networks").glob("*/"))
    assert env.sysctl("net/ipv4/ip_forward") == "0"


def _tbf_rate(env: NetEnv, dev: str) -> int | None:
    """The tbf rate on a device in bits/s, from `tc -j` (None: no tbf, or no device)."""
    r = env.run("tc", "-j", "qdisc", "show", "dev", dev, check=False)
    if r.returncode != 0:
        return None
    for q in json.loads(r.stdout or "[]"):
        if q.get("kind") == "tbf":
            return int(q["options"]["rate"]) * 8
    return None


def _receive_seconds(sender: dict[str, Any], receiver: dict[str, Any], kib: int) -> float:
    """Send `kib` KiB with nc; the receiver times first to last byte on its own clock."""
    ok(receiver, "rm -f /tmp/got; (sleep 300 | nc -l -p 7000 | (dd bs=1 count=1 of=/dev/null "
                 "2>/dev/null; a=$(cut -d' ' -f1 /proc/uptime); n=$(wc -c); "
                 "b=$(cut -d' ' -f1 /proc/uptime); echo \"GOT $n $a $b\" > /tmp/got) &)")
    time.sleep(0.5)
    ok(sender, f"dd if=/dev/zero bs=1k count={kib} 2>/dev/null | nc 10.253.1.20 7000",
       timeout=120)

    def got() -> str | None:
        out, _ = guest(receiver, "cat /tmp/got 2>/dev/null")
        m = re.search(r"GOT (\d+) ([\d.]+) ([\d.]+)", out)
        return m.group(0) if m else None

    n, a, b = wait_for(got, 120, "the receiver to finish").split()[1:]
    assert int(n) == kib * 1024 - 1
    return float(b) - float(a)
