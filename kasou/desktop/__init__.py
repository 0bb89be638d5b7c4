"""Desktop pools (VDI): many alike desktop VMs made from one template, handed to users.

models.py holds what users send and see, accounting.py the pure pool arithmetic (names,
who gets which desktop, what a resize adds or removes, whether a pool fits the host),
service.py the actions on real VMs, hook.py what a desktop VM's life owes to its pool.
"""
