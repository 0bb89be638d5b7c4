"""What users ask of the network: forwards, NICs, networks, rules, rates; and addressing."""

from __future__ import annotations

import pytest

from kasou.errors import CapacityError, InvalidSpec
from kasou.network.addressing import (
    allocate_ip,
    check_ip,
    gateway_of,
    ifb_name,
    tap_name,
    user_mac,
    vm_id_of_tap,
)
from kasou.network.service import parse
from kasou.network.spec import (
    NetworkSpec,
    RuleSpec,
    format_rate,
    normalize_mac,
    parse_forward,
    parse_rate,
)
from kasou.spec import parse_spec


@pytest.mark.parametrize(("text", "hostfwd", "shown"), [
    ("2222:22", "tcp:127.0.0.1:2222-:22", "127.0.0.1:2222 -> 22/tcp"),
    ("8080:80/tcp", "tcp:127.0.0.1:8080-:80", "127.0.0.1:8080 -> 80/tcp"),
    ("5353:53/UDP", "udp:127.0.0.1:5353-:53", "127.0.0.1:5353 -> 53/udp"),
    ("0.0.0.0:8443:443", "tcp:0.0.0.0:8443-:443", "0.0.0.0:8443 -> 443/tcp"),
])
def test_forwards_parse(text: str, hostfwd: str, shown: str) -> None:
    fwd = parse_forward(text)
    assert fwd.hostfwd() == hostfwd
    assert str(fwd) == shown
    assert parse_forward(fwd.canonical()) == fwd


@pytest.mark.parametrize(("text", "reason"), [
    ("22", "HOSTPORT:GUESTPORT"),
    ("2222:22/sctp", "tcp or udp"),
    ("0:22", "host port 0"),
    ("2222:70000", "guest port 70000"),
    ("999.1.1.1:22:22", "not an IPv4 address"),
    ("a:b", "HOSTPORT:GUESTPORT"),
])
def test_bad_forwards_name_the_problem(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_forward(text)


def test_vm_spec_network_fields() -> None:
    spec = parse_spec({"name": "w", "image": "tiny", "forwards": ["2222:22"],
                       "nics": [{"network": "lan", "ip": "10.0.0.5",
                                 "mac": "52-54-00-AA-BB-CC"}]})
    assert spec.forwards == ["127.0.0.1:2222:22/tcp"]
    assert spec.nics[0].mac == "52:54:00:aa:bb:cc"
    for data, field in [
        ({"forwards": ["2222:22", "2222:23"]}, "forwards"),
        ({"nics": [{"network": "lan", "ip": "10.0.0.300"}]}, "nics.0.ip"),
        ({"nics": [{"network": "lan", "mac": "01:00:00:00:00:01"}]}, "nics.0.mac"),
        ({"nics": [{"network": "lan", "bogus": 1}]}, "nics.0.bogus"),
        ({"nics": [{"network": "lan"}] * 9}, "nics"),
        ({"nics": [{"network": "x" * 16}]}, "nics.0.network"),
    ]:
        with pytest.raises(InvalidSpec) as e:
            parse_spec({"name": "w", "image": "tiny", **data})
        assert e.value.field == field, (data, e.value.message)


def test_mac_rules() -> None:
    assert normalize_mac("52:54:00:0A:0b:0C") == "52:54:00:0a:0b:0c"
    for bad in ("01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:00:00", "zz:54:00:00:00:01"):
        with pytest.raises(ValueError):
            normalize_mac(bad)


@pytest.mark.parametrize(("subnet", "reason"), [
    ("10.0.0.1/24", "host bits"),
    ("10.0.0.0/30", "/8 to /29"),
    ("127.0.0.0/8", "special-purpose"),
    ("224.0.0.0/24", "special-purpose"),
    ("fd00::/64", "IPv4"),
])
def test_network_subnets(subnet: str, reason: str) -> None:
    with pytest.raises(InvalidSpec, match=reason) as e:
        parse(NetworkSpec, {"name": "lan", "subnet": subnet})
    assert e.value.field == "subnet"


def test_network_names_are_interface_names() -> None:
    assert parse(NetworkSpec, {"name": "lan-1", "subnet": "10.1.0.0/24"}).mode == "nat"
    for bad in ("a" * 16, "has.dot", "../x", ""):
        with pytest.raises(InvalidSpec) as e:
            parse(NetworkSpec, {"name": bad, "subnet": "10.1.0.0/24"})
        assert e.value.field == "name"


def test_rules() -> None:
    rule = parse(RuleSpec, {"direction": "in", "protocol": "tcp", "ports": "8000-8100"})
    assert rule.port_range() == (8000, 8100) and rule.cidr == "0.0.0.0/0"
    for data, reason in [
        ({"direction": "in", "protocol": "icmp", "ports": "80"}, "only tcp and udp"),
        ({"direction": "in", "protocol": "tcp", "ports": "90-80"}, "low to high"),
        ({"direction": "in", "cidr": "10.0.0.1/8"}, "host bits"),
        ({"direction": "sideways"}, "direction"),
        ({"direction": "in", "action": "maybe"}, "action"),
    ]:
        with pytest.raises(InvalidSpec, match=reason):
            parse(RuleSpec, data)


def test_rates() -> None:
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("1.5gbit") == 1_500_000_000
    assert parse_rate("800kbit") == 800_000
    assert parse_rate(64000) == 64000
    assert parse_rate("none") is None and parse_rate(None) is None and parse_rate("0") is None
    assert format_rate(10_000_000) == "10mbit" and format_rate(256_000) == "256kbit"
    for bad in ("10 MB/s", "fast", "100bit"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_addresses() -> None:
    assert gateway_of("10.9.0.0/24") == "10.9.0.1"
    assert allocate_ip("10.9.0.0/24", "10.9.0.1", {"10.9.0.2"}) == "10.9.0.3"
    with pytest.raises(CapacityError):
        allocate_ip("10.9.0.0/29", "10.9.0.1", {f"10.9.0.{i}" for i in range(2, 7)})
    check_ip("10.9.0.0/24", "10.9.0.1", "10.9.0.9", "ip")
    for bad, reason in [("10.9.1.9", "not in"), ("10.9.0.255", "broadcast"),
                        ("10.9.0.1", "gateway"), ("10.9.0.0", "network")]:
        with pytest.raises(InvalidSpec, match=reason):
            check_ip("10.9.0.0/24", "10.9.0.1", bad, "ip")


def test_interface_names() -> None:
    vm_id = "0123456789ab"
    assert tap_name(vm_id, 0) == "kt0123456789ab0" and len(tap_name(vm_id, 7)) == 15
    assert ifb_name(vm_id, 1) == "kb0123456789ab1"
    assert vm_id_of_tap(tap_name(vm_id, 3)) == vm_id
    assert vm_id_of_tap("eth0") is None and vm_id_of_tap("ktZZZZZZZZZZZZ0") is None
    assert user_mac(vm_id) == user_mac(vm_id) != user_mac("ba9876543210")
    assert user_mac(vm_id).startswith("52:54:00:")


def test_cli_network_options() -> None:
    from kasou.cli.network import nic_lines, vm_network_spec

    assert vm_network_spec(["2222:22"], [], [], []) == {"forwards": ["2222:22"]}
    assert vm_network_spec([], ["a", "b"], ["10.0.0.5"], []) == {
        "nics": [{"network": "a", "ip": "10.0.0.5"}, {"network": "b"}]}
    lines = nic_lines({"network": {"nics": [
        {"index": 0, "kind": "user", "mac": "52:54:00:01:02:03", "ip": "10.0.2.15",
         "forwards": ["127.0.0.1:2222 -> 22/tcp", "127.0.0.1:8080 -> 80/tcp"]}]}})
    assert lines == {"nic0": "user  52:54:00:01:02:03  ip 10.0.2.15",
                     "forwards": "127.0.0.1:2222 -> 22/tcp, 127.0.0.1:8080 -> 80/tcp"}
    bridge = nic_lines({"network": {"secgroups": [], "nics": [
        {"index": 0, "kind": "bridge", "mac": "m", "network": "lan", "ip": "10.1.0.2",
         "tap": "kt0", "inbound": "10mbit"}]}})
    assert bridge["nic0"] == "bridge  m  network lan  ip 10.1.0.2  tap kt0  inbound 10mbit"
    assert "inbound denied" in bridge["secgroups"]
