import pytest

from kasou.errors import InvalidSpec
from kasou.spec import parse_spec
from kasou.units import format_size, parse_size


def test_defaults_and_memory_parsing() -> None:
    spec = parse_spec({"name": "web-1", "image": "tiny", "memory": "1G"})
    assert spec.memory == 1024 and spec.vcpus == 1 and spec.machine is None


@pytest.mark.parametrize(("memory", "mib"), [("256M", 256), ("2G", 2048), ("1.5GiB", 1536),
                                              (512, 512), ("64", 64)])
def test_memory_forms(memory: object, mib: int) -> None:
    assert parse_spec({"name": "a", "image": "tiny", "memory": memory}).memory == mib


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"name": "a", "image": "tiny", "memory": "0"}, "memory", "greater than zero"),
    ({"name": "a", "image": "tiny", "memory": "-5M"}, "memory", "not a size"),
    ({"name": "a", "image": "tiny", "memory": "lots"}, "memory", "not a size"),
    ({"name": "a", "image": "tiny", "memory": "8M"}, "memory", "greater than or equal to 16"),
    ({"name": "a", "image": "tiny", "memory": "100K"}, "memory", "whole number of MiB"),
    # found by schemathesis: a JSON list where a size goes was a TypeError (a 500)
    ({"name": "a", "image": "tiny", "disk_size": []}, "disk_size", "a size such as"),
    ({"name": "a", "image": "tiny", "memory": {"m": 1}}, "memory", "a size such as"),
    ({"name": "a", "image": "tiny", "vcpus": 0}, "vcpus", "greater than or equal to 1"),
    ({"name": "a", "image": "tiny", "vcpus": "two"}, "vcpus", "integer"),
    ({"name": "a", "image": "tiny", "colour": "red"}, "colour", "unknown field"),
    ({"name": "../etc", "image": "tiny"}, "name", "not allowed"),
    ({"name": "a/b", "image": "tiny"}, "name", "not allowed"),
    ({"name": ".hidden", "image": "tiny"}, "name", "not allowed"),
    ({"name": "", "image": "tiny"}, "name", "not allowed"),
    ({"name": "x" * 64, "image": "tiny"}, "name", "not allowed"),
    ({"name": "a", "image": "../../etc"}, "image", "not allowed"),
    ({"name": "a"}, "image", "nothing to boot"),
    ({"name": "a", "kernel": "vmlinuz"}, "kernel", "absolute path"),
    ({"name": "a", "initrd": "/boot/initrd"}, "initrd", "needs --kernel"),
    ({"name": "a", "disks": ["/d.img"], "machine": "microvm"}, "machine", "microvm"),
    ({"name": "a", "image": "tiny", "machine": "vax"}, "machine", "microvm"),
    ({"name": "a", "image": "tiny", "cmdline": "a\nb"}, "cmdline", "one line"),
])
def test_bad_input_names_the_field(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(data)
    assert exc.value.field == field
    assert words in exc.value.message
    assert exc.value.status == 422


def test_every_bad_field_is_reported() -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec({"name": "a", "image": "tiny", "memory": "0", "vcpus": 0, "x": 1})
    assert {e["field"] for e in exc.value.errors} == {"memory", "vcpus", "x"}


def test_sizes_round_trip() -> None:
    assert parse_size("3G") == 3 << 30
    assert format_size(3 << 30) == "3G"
    assert format_size(1536 << 20) == "1536M"
    with pytest.raises(ValueError):
        parse_size(True)  # type: ignore[arg-type]
