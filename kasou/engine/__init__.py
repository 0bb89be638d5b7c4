"""The engine: accelerator choice, pure QEMU argv builders, QMP, process supervision."""
