"""kasou (仮想): a hypervisor platform on QEMU."""

__version__ = "0.1.0"
