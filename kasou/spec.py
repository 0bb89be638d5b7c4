"""What a user asks for: the VM spec, validated before anything is touched.

Validation here is pure (no file system); the service checks that files exist and that the
image is built when it resolves a spec into a launch plan.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from kasou.cloudinit import userdata
from kasou.errors import InvalidSpec
from kasou.isolation.limits import Limits
from kasou.names import Name
from kasou.network.spec import NicSpec, check_forwards, check_nics
from kasou.units import parse_size

MIN_MEMORY_MIB = 16
MAX_VCPUS_HARD = 1024  # beyond any machine type; the real per-machine limit comes from QEMU


def _memory_mib(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number of MiB or a size such as 256M")
    size = parse_size(int(value) if isinstance(value, float) else value, default_unit="M")
    if size % (1 << 20):
        raise ValueError("must be a whole number of MiB")
    return size >> 20


MemoryMiB = Annotated[int, BeforeValidator(_memory_mib), Field(ge=MIN_MEMORY_MIB)]
DiskMiB = Annotated[int, BeforeValidator(_memory_mib), Field(ge=1)]


class VMSpec(BaseModel):
    """The user's definition of a VM. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    image: Name | None = None
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS_HARD)
    memory: MemoryMiB = 256
    machine: Literal["microvm", "pc", "q35"] | None = None
    firmware: Literal["bios", "uefi"] | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: list[str] = Field(default_factory=list)
    iso: str | None = None
    # Storage (kasou/storage): the VM's own disk, cloned from a template volume (a qcow2
    # overlay, or a copy with full_clone) or blank when only disk_size is given; and
    # existing volumes attached at creation.
    template: Name | None = None
    full_clone: bool = False
    disk_size: DiskMiB | None = None
    volumes: list[Name] = Field(default_factory=list)
    # cloud-init (kasou/cloudinit): the user-data text itself (the CLI reads the file),
    # public keys for the default user, the guest's host name (default: from the name).
    user_data: str | None = None
    ssh_keys: list[str] = Field(default_factory=list)
    hostname: str | None = None
    # Network (kasou/network): with no nics, one user-mode NAT NIC carrying the port
    # forwards "[ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]"; else NICs on host networks.
    forwards: list[str] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    # Isolation (kasou/isolation): CPU limit/weight/pinning, balloon target, I/O weight at
    # create time; `kasou vm set` changes them later.
    limits: Limits | None = None
    # Desktop (kasou/console): a VGA screen served by VNC on a Unix socket, reached from a
    # browser through the API's WebSocket proxy with a console token.
    display: bool = False

    @field_validator("forwards")
    @classmethod
    def _forwards(cls, v: list[str]) -> list[str]:
        return check_forwards(v)

    @field_validator("nics")
    @classmethod
    def _nics(cls, v: list[NicSpec]) -> list[NicSpec]:
        return check_nics(v)


    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a volume is listed twice")
        return v

    @field_validator("user_data")
    @classmethod
    def _user_data(cls, v: str | None) -> str | None:
        return None if v is None else userdata.check_user_data(v)

    @field_validator("ssh_keys")
    @classmethod
    def _ssh_keys(cls, v: list[str]) -> list[str]:
        return userdata.check_ssh_keys(v)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        return None if v is None else userdata.check_hostname(v)

    @field_validator("kernel", "initrd", "iso")
    @classmethod
    def _abs_path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must be an absolute path on the host")
        return v

    @field_validator("disks")
    @classmethod
    def _abs_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} must be an absolute path on the host")
        return v

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, v: str | None) -> str | None:
        if v is not None and ("\n" in v or "\x00" in v):
            raise ValueError("must be one line")
        return v

    def boot_source_problem(self) -> tuple[str, str] | None:
        """A (field, reason) pair when the spec has nothing to boot or conflicting sources."""
        if self.initrd and not self.kernel:
            return "initrd", "an initrd needs --kernel"
        if self.cmdline and not (self.kernel or self.image):
            return "cmdline", "a kernel command line needs --kernel or an image"
        if self.full_clone and not self.template:
            return "full_clone", "--full-clone needs --from TEMPLATE"
        if not (self.image or self.kernel or self.disks or self.iso or self.template
                or self.volumes):
            return "image", "give --image, --kernel, --disk, --iso, --from or --volume: " \
                "the VM has nothing to boot"
        kernel_boot = self.kernel or self.image
        block = self.disks or self.template or self.volumes
        if self.machine == "microvm" and (self.iso or (block and not kernel_boot)):
            return "machine", "microvm boots only a kernel directly; use pc or q35 to boot " \
                "disks and ISOs"
        if self.firmware == "uefi" and self.machine == "microvm":
            return "firmware", "microvm has no UEFI firmware; use pc or q35"
        return None


def _field_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "spec"


def parse_spec(data: dict[str, Any]) -> VMSpec:
    """Validate user input into a VMSpec, or raise InvalidSpec naming every bad field."""
    try:
        spec = VMSpec.model_validate(data)
    except ValidationError as e:
        errors = [{"field": _field_of(err["loc"]), "message": _message(err)} for err in e.errors()]
        first = errors[0]
        raise InvalidSpec(f"{first['field']}: {first['message']}", field=first["field"],
                          errors=errors) from None
    problem = spec.boot_source_problem()
    if problem:
        field, reason = problem
        raise InvalidSpec(f"{field}: {reason}", field=field,
                          errors=[{"field": field, "message": reason}])
    return spec


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")
