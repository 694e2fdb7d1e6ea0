"""Who writes a user's deliveries (DR-61): rendezvous hashing over the processes that listen.
A process joining takes users only for itself, one leaving hands only its own users on, and
every user has exactly one owner among the members."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from adapters.hand_off import owner_of

names = st.text(st.characters(codec="utf-8", exclude_characters="\n/\x00"), min_size=1)
members = st.lists(names, min_size=1, max_size=6, unique=True)


@given(members=members, user=names)
def test_the_owner_is_a_member_and_does_not_depend_on_their_order(
    members: list[str], user: str
) -> None:
    owner = owner_of(user, members)
    assert owner in members
    assert owner_of(user, list(reversed(members))) == owner


@given(members=members, newcomer=names, user=names)
def test_a_process_joining_takes_users_only_for_itself(
    members: list[str], newcomer: str, user: str
) -> None:
    if newcomer in members:
        return
    after = owner_of(user, [*members, newcomer])
    assert after in (owner_of(user, members), newcomer)


@given(members=members.filter(lambda m: len(m) > 1), user=names)
def test_a_process_leaving_hands_on_only_its_own_users(members: list[str], user: str) -> None:
    owner = owner_of(user, members)
    for leaving in members:
        if leaving != owner:
            assert owner_of(user, [m for m in members if m != leaving]) == owner


def test_users_are_spread_over_the_processes() -> None:
    processes = ["4101-1a2b3c4d", "4102-5e6f7a8b"]
    shares = Counter(owner_of(f"user-{n}", processes) for n in range(10_000))
    assert set(shares) == set(processes)
    assert min(shares.values()) > 4_700  # about half each


def test_one_writer_writes_every_user() -> None:
    assert {owner_of(f"user-{n}", ["4101-1a2b3c4d"]) for n in range(100)} == {"4101-1a2b3c4d"}
