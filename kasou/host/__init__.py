"""The host: accelerator probe, capacity, facts for `kasou host info`."""
