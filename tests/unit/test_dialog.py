"""Dialog identity from either side (RFC 3261 §12) and RFC 4235 dialog states."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.sip.dialog import DialogId, DialogState, uac_dialog_id, uas_dialog_id

CALL_ID = "a84b4c76e66710@pc33.atlanta.com"


def test_uac_and_uas_see_swapped_tags() -> None:
    # RFC 3261 §12.1.1 (UAS: local = To tag) and §12.1.2 (UAC: local = From tag).
    uac = uac_dialog_id(CALL_ID, from_tag="1928301774", to_tag="a6c85cf")
    uas = uas_dialog_id(CALL_ID, from_tag="1928301774", to_tag="a6c85cf")
    assert uac == DialogId(CALL_ID, "1928301774", "a6c85cf")
    assert uas == DialogId(CALL_ID, "a6c85cf", "1928301774")
    assert uac.reversed() == uas
    assert uas.reversed().reversed() == uas


def test_dialog_id_is_frozen_and_hashable() -> None:
    one = uac_dialog_id(CALL_ID, "x", "y")
    table = {one: "call"}
    assert table[DialogId(CALL_ID, "x", "y")] == "call"
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.local_tag = "z"  # type: ignore[misc]


def test_values_are_kept_verbatim() -> None:
    # Call-ID is case-sensitive (RFC 3261 §20.8); tags are echoed byte for byte.
    assert uac_dialog_id(CALL_ID, "AbC", "x") != uac_dialog_id(CALL_ID, "abc", "x")
    assert uac_dialog_id(CALL_ID.upper(), "a", "b") != uac_dialog_id(CALL_ID, "a", "b")


def test_missing_tags_become_empty_and_incomplete() -> None:
    early = uas_dialog_id(CALL_ID, from_tag="1928301774", to_tag=None)
    assert early == DialogId(CALL_ID, "", "1928301774")
    assert not early.is_complete
    assert uac_dialog_id(CALL_ID, "a", "b").is_complete


def test_call_id_is_required() -> None:
    with pytest.raises(ValueError):
        DialogId("", "a", "b")


def test_dialog_states_follow_rfc_4235() -> None:
    assert [state.value for state in DialogState] == [
        "trying",
        "proceeding",
        "early",
        "confirmed",
        "terminated",
    ]
    assert DialogState.TERMINATED.is_final
    assert not DialogState.CONFIRMED.is_final
