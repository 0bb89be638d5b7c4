"""The guest agent area: commands run inside a VM (`kasou vm exec`) and what the guest says
about itself (IP addresses, OS) in `kasou vm show`, through qemu-guest-agent
(kasou/engine/agent.py)."""
