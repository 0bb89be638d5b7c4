import pytest

from kasou.errors import InvalidState
from kasou.state import ACTIONS, LIVE, TRANSITIONS, VMState, can_move, check

S = VMState


def test_start_from_stopped_goes_to_starting() -> None:
    assert check("a", S.STOPPED, "start") == S.STARTING


def test_crashed_vm_can_be_started_again() -> None:
    assert check("a", S.CRASHED, "start") == S.STARTING


@pytest.mark.parametrize(("state", "action"), [
    (S.STOPPED, "pause"), (S.STOPPED, "stop"), (S.PAUSED, "pause"), (S.RUNNING, "resume"),
    (S.RUNNING, "start"), (S.RUNNING, "delete"), (S.PAUSED, "reboot"), (S.STOPPED, "console"),
])
def test_refused_actions_name_both_states(state: VMState, action: str) -> None:
    with pytest.raises(InvalidState) as exc:
        check("web1", state, action)
    msg = exc.value.message
    assert "web1" in msg and state.value in msg and action in msg
    for needed in ACTIONS[action][0]:
        assert needed.value in msg
    assert exc.value.status == 409


def test_every_action_target_is_a_legal_transition() -> None:
    for action, (sources, target) in ACTIONS.items():
        if target is None or action in ("kill",):
            continue
        for src in sources:
            assert can_move(src, target), (action, src, target)


def test_stopped_cannot_jump_to_running() -> None:
    assert not can_move(S.STOPPED, S.RUNNING)
    assert not can_move(S.CRASHED, S.RUNNING)


def test_every_live_state_can_crash() -> None:
    for s in LIVE:
        assert (s, S.CRASHED) in TRANSITIONS
    assert (S.STOPPED, S.CRASHED) not in TRANSITIONS
