"""The VM lifecycle: states, and the one table of allowed transitions.

    stopped ──start──> starting ──> running ⇄ paused
       ^                  │            │
       │                  v            v
       └──────────── stopping <────────┘        any live state ──> crashed
    crashed ──start──> starting;   stopped/crashed ──delete──> (gone)
    running/paused ──suspend──> suspending ──> suspended ──start──> starting (restores RAM)
    suspended ──discard──> stopped;   suspended ──delete──> (gone)

Every state change goes through `check()`; a refused one raises InvalidState, which names
the current state and the states the action needs.
"""

from __future__ import annotations

from enum import StrEnum

from kasou.errors import InvalidState


class VMState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    CRASHED = "crashed"
    SUSPENDING = "suspending"    # RAM and device state being saved to disk
    SUSPENDED = "suspended"      # no process; the next start restores the saved state


S = VMState

# action -> (states it may start from, state it moves to while/after acting)
ACTIONS: dict[str, tuple[frozenset[VMState], VMState | None]] = {
    "start": (frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED}), S.STARTING),
    "stop": (frozenset({S.RUNNING, S.PAUSED, S.STARTING, S.STOPPING}), S.STOPPING),
    "kill": (frozenset({S.RUNNING, S.PAUSED, S.STARTING, S.STOPPING}), S.STOPPED),
    "pause": (frozenset({S.RUNNING}), S.PAUSED),
    "resume": (frozenset({S.PAUSED}), S.RUNNING),
    "reboot": (frozenset({S.RUNNING}), S.RUNNING),
    "delete": (frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED}), None),
    "console": (frozenset({S.RUNNING, S.PAUSED, S.STARTING, S.STOPPING}), None),
    # storage (kasou/storage): saved state, snapshots, disks
    "suspend": (frozenset({S.RUNNING, S.PAUSED}), S.SUSPENDING),
    "discard": (frozenset({S.SUSPENDED}), S.STOPPED),
    "snapshot": (frozenset({S.STOPPED, S.CRASHED, S.RUNNING, S.PAUSED}), None),
    "revert": (frozenset({S.STOPPED, S.CRASHED, S.RUNNING, S.PAUSED}), None),
    "change disks of": (frozenset({S.STOPPED, S.CRASHED, S.RUNNING, S.PAUSED}), None),
}

# Every state change that may happen, by request or by event.
TRANSITIONS: frozenset[tuple[VMState, VMState]] = frozenset({
    (S.STOPPED, S.STARTING),
    (S.CRASHED, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.PAUSED),      # re-attach finds it paused
    (S.STARTING, S.STOPPED),     # launch failed, rolled back
    (S.STARTING, S.STOPPING),
    (S.RUNNING, S.PAUSED),
    (S.PAUSED, S.RUNNING),
    (S.RUNNING, S.STOPPING),
    (S.PAUSED, S.STOPPING),
    (S.STOPPING, S.STOPPED),
    (S.RUNNING, S.STOPPED),      # guest powered itself off
    (S.PAUSED, S.STOPPED),
    (S.STARTING, S.CRASHED),
    (S.RUNNING, S.CRASHED),
    (S.PAUSED, S.CRASHED),
    (S.STOPPING, S.CRASHED),
    (S.RUNNING, S.SUSPENDING),
    (S.PAUSED, S.SUSPENDING),
    (S.SUSPENDING, S.SUSPENDED),  # saved; QEMU has exited
    (S.SUSPENDING, S.RUNNING),    # saving failed; the guest carries on
    (S.SUSPENDING, S.PAUSED),
    (S.SUSPENDING, S.CRASHED),
    (S.SUSPENDED, S.STARTING),    # restore
    (S.STARTING, S.SUSPENDED),    # restore failed; the saved state is kept
    (S.SUSPENDED, S.STOPPED),     # saved state discarded
})

LIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.SUSPENDING})
"""States in which a QEMU process exists and holds host resources."""


def check(name: str, current: VMState, action: str) -> VMState | None:
    """Raise InvalidState unless `action` is allowed from `current`; return the next state."""
    allowed, target = ACTIONS[action]
    if current not in allowed:
        raise InvalidState(name, current.value, action, [s.value for s in allowed])
    return target


def can_move(current: VMState, new: VMState) -> bool:
    return current == new or (current, new) in TRANSITIONS
