"""The branch state table (proxy/branch_state.py): RFC 3261 §9.1 and §16.7 as invariants
over every sequence of inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.branch_state import TABLE, BranchInput, BranchState, advance


def test_the_table_is_total() -> None:
    assert set(TABLE) == {(s, i) for s in BranchState for i in BranchInput}


@given(st.lists(st.sampled_from(list(BranchInput)), max_size=12))
def test_a_cancel_is_sent_once_at_most_and_never_before_a_provisional(
    inputs: list[BranchInput],
) -> None:
    state = BranchState.TRYING
    sent = 0
    provisional_seen = final_seen = cancel_asked = False
    for seen in inputs:
        state, send = advance(state, seen)
        if send:
            sent += 1
            assert provisional_seen or seen is BranchInput.PROVISIONAL  # §9.1
            assert not final_seen  # nothing to cancel once answered
            assert cancel_asked or seen is BranchInput.CANCEL
        provisional_seen |= seen is BranchInput.PROVISIONAL
        cancel_asked |= seen is BranchInput.CANCEL
        final_seen |= seen is BranchInput.FINAL
        assert (state is BranchState.FINAL) == final_seen  # FINAL absorbs everything
    assert sent <= 1
    # A cancel asked before the answer is carried out as soon as §9.1 allows it.
    if cancel_asked and provisional_seen and not final_seen:
        assert sent == 1 and state is BranchState.CANCELLING


def test_a_wished_cancel_goes_out_with_the_first_provisional() -> None:
    state, send = advance(BranchState.TRYING, BranchInput.CANCEL)
    assert (state, send) == (BranchState.CANCEL_WANTED, False)
    state, send = advance(state, BranchInput.PROVISIONAL)
    assert (state, send) == (BranchState.CANCELLING, True)
    assert state.heard_provisional
