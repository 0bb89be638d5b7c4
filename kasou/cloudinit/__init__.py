"""cloud-init NoCloud for kasou VMs: user input checked before a VM exists (userdata.py),
the per-VM `cidata` seed ISO (seed.py), and the VM hook that attaches it (hook.py)."""
