"""How a batch's plain deliveries are split into rounds of one statement each (DR-61)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.postgres.webhook_events import batch_rounds
from domain.ports import DeliveryRecord
from tests.support.ledger_records import USERS, delivery


@given(
    st.lists(
        st.builds(delivery, st.sampled_from(USERS), st.integers(0, 2), st.integers(0, 1)),
        max_size=30,
    )
)
def test_each_round_holds_a_user_and_a_delivery_once_and_keeps_their_order(
    batch: list[DeliveryRecord],
) -> None:
    rounds = batch_rounds(batch)
    assert sorted(p for r in rounds for p in r) == list(range(len(batch)))
    for places in rounds:
        assert places == sorted(places)
        users = [batch[p].route.user_id for p in places]  # type: ignore[union-attr]
        ids = [batch[p].event_id for p in places]
        assert len(set(users)) == len(users)
        assert len(set(ids)) == len(ids)
    # A user's deliveries go round after round in the order they came.
    for user in USERS:
        mine = [p for r in rounds for p in r if batch[p].route.user_id == user]  # type: ignore[union-attr]
        assert mine == sorted(mine)
