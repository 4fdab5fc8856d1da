from __future__ import annotations

import pickle
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.models import Address, Customer, OrderReceived
from events.privacy import PrivateCodec
from events.privacy import customer_key as pseudonym
from infra.keystore import MemoryKeys
from streams.customers import (
    VIP_ORDERS,
    VIP_SPEND,
    CustomerHistory,
    CustomerNorm,
    customer_key,
    normalise_address,
    normalise_phone,
)
from tests.factories import T0, numbered, received

PHONE = "+8613800000000"


order = numbered


def history_of(*orders: OrderReceived) -> CustomerHistory:
    history = CustomerHistory()
    for each in orders:
        history.record(each)
    return history


def test_redelivered_order_is_recorded_once() -> None:
    history = history_of(order(1), order(1), order(1))
    assert history.recent(phone=PHONE, since=T0) == 1
    assert history.norm(PHONE) == CustomerNorm(orders=1, mean_total=6100)


def test_phone_is_matched_whatever_its_spacing_and_punctuation() -> None:
    history = history_of(order(1, customer=Customer(phone="+86 138-0000-0000")))
    assert history.recent(phone=PHONE, since=T0) == 1
    assert history.recent(phone="＋86 138 0000 0000", since=T0) == 1  # full-width


def test_address_is_matched_casefolded_with_whitespace_collapsed() -> None:
    history = history_of(order(1, address=Address(text="88  Nanjing Rd\n")))
    assert history.recent(address=" 88 NANJING rd", since=T0) == 1
    assert history.recent(address="89 Nanjing Rd", since=T0) == 0


def test_orders_are_counted_per_device() -> None:
    history = history_of(order(1, device_id="dev-a"), order(2, device_id="dev-b"))
    assert history.recent(device="dev-a", since=T0) == 1
    assert history.recent(device="dev-c", since=T0) == 0


def test_an_order_placed_exactly_at_since_counts_and_one_just_before_does_not() -> None:
    history = history_of(order(1, minutes=0), order(2, minutes=10))
    assert history.recent(phone=PHONE, since=T0) == 2
    assert history.recent(phone=PHONE, since=T0 + timedelta(microseconds=1)) == 1


def test_until_leaves_out_orders_placed_after_it() -> None:
    history = history_of(order(1, minutes=0), order(2, minutes=10))
    assert history.recent(phone=PHONE, since=T0, until=T0 + timedelta(minutes=10)) == 2
    assert history.recent(phone=PHONE, since=T0, until=T0 + timedelta(minutes=9)) == 1


def test_recording_out_of_order_counts_the_same() -> None:
    forwards = history_of(order(1, minutes=0), order(2, minutes=5))
    backwards = history_of(order(2, minutes=5), order(1, minutes=0))
    assert forwards.recent(phone=PHONE, since=T0) == backwards.recent(phone=PHONE, since=T0)
    assert forwards.norm(PHONE) == backwards.norm(PHONE)


def test_the_excluded_order_does_not_count_itself() -> None:
    history = history_of(order(1), order(2, total=3000))
    assert history.recent(phone=PHONE, since=T0, excluding="o-2") == 1
    assert history.norm(PHONE, excluding="o-2") == CustomerNorm(orders=1, mean_total=6100)
    assert history.tier(PHONE, excluding="o-1") == "regular"


def test_recent_counts_by_exactly_one_key() -> None:
    history = CustomerHistory()
    with pytest.raises(ValueError, match="exactly one"):
        history.recent(since=T0)
    with pytest.raises(ValueError, match="exactly one"):
        history.recent(phone=PHONE, device="d", since=T0)


def test_norm_is_the_floored_mean_of_the_customers_totals() -> None:
    history = history_of(order(1, total=1000), order(2, total=1001))
    assert history.norm(PHONE) == CustomerNorm(orders=2, mean_total=1000)
    assert history.norm("+8600") is None


def test_customer_key_is_the_channel_id_else_the_phone_else_none() -> None:
    assert customer_key(received(customer=Customer(id="c9", phone=PHONE))) == "webshop:c9"
    assert customer_key(received(customer=Customer(phone="+86 138 0000 0000"))) == PHONE
    assert customer_key(received(customer=Customer(name="anon"))) is None


def test_an_order_without_a_customer_key_counts_for_velocity_but_no_norm() -> None:
    history = history_of(order(1, customer=Customer(name="anon"), device_id="d"))
    assert history.recent(device="d", since=T0) == 1
    assert history.norm(PHONE) is None


@pytest.mark.parametrize(
    ("orders", "total", "tier"),
    [
        (0, 100, "new"),
        (1, 100, "regular"),
        (VIP_ORDERS - 1, 100, "regular"),
        (VIP_ORDERS, 100, "vip"),
        (1, VIP_SPEND - 1, "regular"),
        (1, VIP_SPEND, "vip"),
    ],
)
def test_tier_follows_order_count_and_spend(orders: int, total: int, tier: str) -> None:
    history = history_of(*(order(n, total=total) for n in range(orders)))
    assert history.tier(PHONE) == tier


def test_prune_forgets_velocity_but_keeps_norms_and_tiers() -> None:
    history = history_of(*(order(n, minutes=n) for n in range(12)))
    history.prune(T0 + timedelta(minutes=10))
    assert history.tracked_orders == 2
    assert history.recent(phone=PHONE, since=T0) == 2
    assert history.norm(PHONE) == CustomerNorm(orders=12, mean_total=6100)
    assert history.tier(PHONE) == "vip"


def test_an_order_older_than_the_prune_horizon_counts_for_norms_only() -> None:
    history = CustomerHistory()
    history.prune(T0)
    history.record(order(1, minutes=-5))
    assert history.tracked_orders == 0
    assert history.recent(phone=PHONE, since=T0 - timedelta(hours=1)) == 0
    assert history.norm(PHONE) == CustomerNorm(orders=1, mean_total=6100)


def test_velocity_memory_stays_bounded_when_pruned_as_time_passes() -> None:
    history = CustomerHistory()
    for n in range(500):
        history.record(order(n, minutes=n, device_id=f"d{n}", address=Address(text=f"{n} Rd")))
        history.prune(T0 + timedelta(minutes=n - 60))
    assert history.tracked_orders == 61
    assert history.norm(PHONE) == CustomerNorm(orders=500, mean_total=6100)


def test_normalisers_give_the_forms_used_for_matching() -> None:
    assert normalise_phone(" +86 (138) 0000-0000 ") == PHONE
    assert normalise_phone("138 0000 0000") == "13800000000"
    assert normalise_phone("n/a") == ""
    assert normalise_address("  88\tNanjing   RD ") == "88 nanjing rd"


_orders = st.builds(
    lambda n, minutes, phone, device: order(
        n, minutes=minutes, customer=Customer(phone=phone), device_id=device
    ),
    st.integers(0, 20),
    st.integers(-120, 120),
    st.sampled_from(["+861", "+862", "+86 1"]),
    st.sampled_from([None, "d1", "d2"]),
)


@given(st.lists(_orders, max_size=15), _orders, st.integers(-180, 180))
def test_recording_an_order_never_lowers_a_velocity_count(
    before: list[OrderReceived], extra: OrderReceived, since_minutes: int
) -> None:
    history = history_of(*before)
    since = T0 + timedelta(minutes=since_minutes)

    def counts() -> list[int]:
        return [
            history.recent(phone="+861", since=since),
            history.recent(phone="+862", since=since),
            history.recent(device="d1", since=since),
        ]

    before_extra = counts()
    history.record(extra)
    assert all(a >= b for a, b in zip(counts(), before_extra, strict=True))


@given(st.lists(_orders, max_size=15))
def test_recording_everything_twice_changes_nothing(orders: list[OrderReceived]) -> None:
    once, twice = history_of(*orders), history_of(*orders, *reversed(orders))
    for key in ("+861", "+862"):
        assert once.recent(phone=key, since=T0 - timedelta(hours=3)) == twice.recent(
            phone=key, since=T0 - timedelta(hours=3)
        )
        assert once.norm(key) == twice.norm(key)


def sealed_copy(order: OrderReceived, keys: MemoryKeys) -> OrderReceived:
    """The order as the worker reads it from Kafka: sealed by the connector, opened again."""
    codec = PrivateCodec(keys)
    opened = codec.decode(codec.encode(order))
    assert isinstance(opened, OrderReceived) and opened.customer.key
    return opened


def test_customers_are_held_under_their_pseudonymous_key_not_their_phone() -> None:
    """What the views keep (and snapshot) of every customer for norms and tiers: no phone."""
    keys = MemoryKeys()
    first, second = (sealed_copy(numbered(n, minutes=n), keys) for n in (1, 2))
    history = history_of(first, second)
    key = pseudonym(PHONE, keys.pepper)
    assert customer_key(first) == key
    assert history.norm(key) == CustomerNorm(orders=2, mean_total=6100)
    history.prune(T0 + timedelta(days=1))  # the velocity entries (with the phone) gone
    kept = pickle.dumps(history.copy())
    assert PHONE.encode() not in kept and PHONE[3:].encode() not in kept
    assert history.tier(key) == "regular"


def test_forgetting_a_customer_empties_their_velocity_entries_and_keeps_their_counts() -> None:
    keys = MemoryKeys()
    theirs = [sealed_copy(numbered(n, minutes=n), keys) for n in (1, 2)]
    other = sealed_copy(
        numbered(3, minutes=3, customer=Customer(name="李", phone="+8613911111111"),
                 address=Address(text="1 Other Rd"), device_id="dev-9"),
        keys,
    )  # fmt: skip
    history = history_of(*theirs, other)
    key = customer_key(theirs[0])
    assert key is not None
    since = T0 - timedelta(hours=1)
    assert history.recent(phone=PHONE, since=since) == 2

    assert history.forget({key}) == 2
    assert history.recent(phone=PHONE, since=since) == 0
    assert history.recent(address="88 Nanjing Rd", since=since) == 0
    assert PHONE[3:].encode() not in pickle.dumps(history.copy())
    assert history.norm(key) == CustomerNorm(orders=2, mean_total=6100)  # as on the log
    assert history.norm(key, excluding="o-2") == CustomerNorm(orders=1, mean_total=6100)
    assert history.holds("o-1")  # a redelivery still counts once
    history.record(theirs[0])
    assert history.norm(key) == CustomerNorm(orders=2, mean_total=6100)
    # The other customer is untouched, and an order forgotten by its own subject goes too.
    assert history.recent(phone="+8613911111111", since=since) == 1
    assert history.forget(set(), {"o-3"}) == 1
    assert history.recent(device="dev-9", since=since) == 0
    assert history.forget({key}, {"o-3"}) == 0  # nothing left to empty
