"""Networking: user-mode NAT with port forwards, host networks (bridge + dnsmasq + nftables),
per-VM firewall (security groups), anti-spoofing and bandwidth limits.

    spec.py       what users ask for (forwards, NICs, networks, rules, rates), validated
    addressing.py IP and MAC allocation (pure)
    nft.py        the whole kasou ruleset built from stored state (pure) and applied with `nft -j`
    dnsmasq.py    one dnsmasq per network: config (pure) and its process
    host.py       bridges, TAPs, IFBs and addresses through pyroute2
    tc.py         bandwidth limits (tbf on the TAP, and on an IFB for the guest's outbound)
    usernet.py    user-mode NIC: hostfwd strings and the "port already taken" check
    service.py    NetworkService: the one command set for networks and security groups
    hook.py       NetworkHook: NICs into the launch plan, TAPs around the VM's life

Host-side state (bridges, TAPs, rules, dnsmasq) outlives the daemon like the VMs do; it is
always rebuilt from the store, so re-creating it after a restart or reboot is idempotent.
"""
