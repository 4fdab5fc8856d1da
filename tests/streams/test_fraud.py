from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.models import (
    ActorKind,
    Address,
    Customer,
    Location,
    OrderMode,
    OrderReceived,
    deterministic_id,
)
from streams.catalogue import Catalogue, distance_m
from streams.customers import CustomerHistory, customer_key
from streams.fraud import FraudRules, FraudRulesError, Screening, hold, screen
from streams.reference import load_catalogue, load_rules
from tests.factories import T0, numbered

NOW = T0 + timedelta(minutes=1)
CATALOGUE = load_catalogue()
DEFAULTS = FraudRules()
BEIJING = Address(text="1 Chang'an Ave, Beijing", latitude=39.9, longitude=116.4)


order = numbered


def history_of(*orders: OrderReceived) -> CustomerHistory:
    history = CustomerHistory()
    for each in orders:
        history.record(each)
    return history


def screened(
    subject: OrderReceived,
    *previous: OrderReceived,
    rules: FraudRules = DEFAULTS,
    catalogue: Catalogue = CATALOGUE,
) -> Screening:
    return screen(subject, history=history_of(*previous), catalogue=catalogue, rules=rules, now=NOW)


def rules_of(screening: Screening) -> set[str]:
    return {signal.rule for signal in screening.signals}


def elsewhere(n: int) -> Address:
    return Address(text=f"{n} Huaihai Rd", latitude=31.21, longitude=121.45)


def test_an_ordinary_order_scores_nothing_and_passes() -> None:
    assert screened(order(1)) == Screening(score=0, signals=[], held=False)


# ---------------------------------------------------------------- velocity


def test_fourth_order_from_one_phone_within_the_window_is_held() -> None:
    previous = [order(n, minutes=-10 * n) for n in (1, 2, 3)]
    screening = screened(order(4), *previous)
    assert rules_of(screening) == {"VELOCITY_PHONE", "VELOCITY_ADDRESS"}
    assert screening.held


def test_fourth_order_from_one_phone_adds_phone_velocity_points_with_the_numbers() -> None:
    previous = [order(n, minutes=-10 * n, address=elsewhere(n)) for n in (1, 2, 3)]
    screening = screened(order(4), *previous)
    assert rules_of(screening) == {"VELOCITY_PHONE"}
    assert screening.score == DEFAULTS.velocity_phone_points
    assert screening.signals[0].detail == "4 orders from this phone within 60 min (more than 3)"


def test_third_order_from_one_phone_is_within_the_limit() -> None:
    previous = [order(n, minutes=-10 * n, address=elsewhere(n)) for n in (1, 2)]
    assert "VELOCITY_PHONE" not in rules_of(screened(order(4), *previous))


def test_an_order_placed_exactly_a_window_before_counts_and_one_earlier_does_not() -> None:
    edge = T0 - timedelta(minutes=DEFAULTS.window_minutes)
    at_edge = [order(n, placed_at=edge, address=elsewhere(n)) for n in (1, 2, 3)]
    assert "VELOCITY_PHONE" in rules_of(screened(order(4), *at_edge))
    just_out = order(3, placed_at=edge - timedelta(microseconds=1), address=elsewhere(3))
    assert "VELOCITY_PHONE" not in rules_of(screened(order(4), *at_edge[:2], just_out))


def test_orders_placed_after_the_screened_one_do_not_count() -> None:
    later = [order(n, minutes=0.1 * n, address=elsewhere(n)) for n in (1, 2, 3)]
    assert "VELOCITY_PHONE" not in rules_of(screened(order(4), *later))


def test_an_order_already_in_the_history_does_not_count_itself() -> None:
    previous = [order(n, minutes=-n, address=elsewhere(n)) for n in (1, 2)]
    subject = order(4)
    assert screened(subject, *previous, subject) == screened(subject, *previous)


def test_fourth_order_to_one_address_adds_address_velocity_points() -> None:
    previous = [
        order(
            n,
            minutes=-n,
            customer=Customer(phone=f"+86{n}"),
            address=Address(text="88 NANJING  rd"),
        )
        for n in (1, 2, 3)
    ]
    screening = screened(order(4), *previous)
    assert rules_of(screening) == {"VELOCITY_ADDRESS"}
    assert screening.signals[0].detail == "4 orders to this address within 60 min (more than 3)"
    assert "VELOCITY_ADDRESS" not in rules_of(screened(order(4), *previous[:2]))


def test_fourth_order_from_one_device_adds_device_velocity_points() -> None:
    previous = [
        order(
            n, minutes=-n, customer=Customer(phone=f"+86{n}"), address=elsewhere(n), device_id="dev"
        )
        for n in (1, 2, 3)
    ]
    screening = screened(order(4, device_id="dev"), *previous)
    assert rules_of(screening) == {"VELOCITY_DEVICE"}
    assert screening.signals[0].detail == "4 orders from device dev within 60 min (more than 3)"
    assert "VELOCITY_DEVICE" not in rules_of(screened(order(4, device_id="dev"), *previous[:2]))


def test_an_order_with_a_future_placed_at_is_screened_as_of_now() -> None:
    previous = [order(n, minutes=0.5, address=elsewhere(n)) for n in (1, 2, 3)]
    future = order(4, minutes=600)
    assert "VELOCITY_PHONE" in rules_of(screened(future, *previous))


# ---------------------------------------------------------------- amount outlier

CUSTOMER = Customer(id="c1", name="王伟", phone="+8613800000000")


def regular(n: int, total: int) -> OrderReceived:
    return order(n, minutes=-24 * 60 * n, customer=CUSTOMER, total=total)


def test_a_total_over_five_times_the_customers_mean_is_an_outlier() -> None:
    screening = screened(order(9, customer=CUSTOMER, total=5001), regular(1, 900), regular(2, 1100))
    assert rules_of(screening) == {"AMOUNT_OUTLIER"}
    assert screening.signals[0].detail == (
        "total 5001 is 5.0x the customer's mean 1000 over 2 orders (more than 5x)"
    )


def test_a_total_of_exactly_five_times_the_mean_is_not_an_outlier() -> None:
    screening = screened(order(9, customer=CUSTOMER, total=5000), regular(1, 900), regular(2, 1100))
    assert screening.signals == []


def test_one_previous_order_is_too_few_for_an_outlier() -> None:
    assert screened(order(9, customer=CUSTOMER, total=10**6 - 1), regular(1, 1000)).signals == []


# ---------------------------------------------------------------- far from stores


def location(id: str, *, latitude: float, modes: list[OrderMode]) -> Location:
    return Location(id=id, name=id, latitude=latitude, longitude=0.0, capabilities=modes)


def one_store() -> Catalogue:
    return Catalogue(locations={"X1": location("X1", latitude=0.0, modes=[OrderMode.DELIVERY])})


AWAY = Address(text="on the equator", latitude=0.0, longitude=0.1)
AWAY_M = distance_m(0.0, 0.0, 0.0, 0.1)


def test_an_address_farther_than_the_limit_from_every_store_is_far() -> None:
    rules = FraudRules(far_from_stores_m=AWAY_M - 1)
    screening = screened(order(1, address=AWAY), rules=rules, catalogue=one_store())
    assert rules_of(screening) == {"FAR_FROM_STORES"}
    assert screening.signals[0].detail == (
        f"address is {AWAY_M} m from the nearest delivery location X1 (more than {AWAY_M - 1} m)"
    )


def test_an_address_exactly_at_the_limit_is_not_far() -> None:
    rules = FraudRules(far_from_stores_m=AWAY_M)
    assert screened(order(1, address=AWAY), rules=rules, catalogue=one_store()).signals == []


def test_a_delivery_to_beijing_is_far_from_the_shanghai_stores() -> None:
    assert rules_of(screened(order(1, address=BEIJING))) == {"FAR_FROM_STORES"}


def test_only_locations_that_serve_the_orders_mode_count_as_near() -> None:
    catalogue = Catalogue(
        locations={
            "FAR": location("FAR", latitude=10.0, modes=[OrderMode.DELIVERY]),
            "WH": location("WH", latitude=0.0, modes=[OrderMode.SHIP]),
        }
    )
    rules = FraudRules(far_from_stores_modes=frozenset(OrderMode))
    here = Address(text="next to WH", latitude=0.0, longitude=0.0)
    delivery = screened(order(1, address=here), rules=rules, catalogue=catalogue)
    assert rules_of(delivery) == {"FAR_FROM_STORES"}
    ship = screened(order(1, address=here, mode=OrderMode.SHIP), rules=rules, catalogue=catalogue)
    assert ship.signals == []


def test_no_location_serving_the_mode_is_no_evidence_of_distance() -> None:
    rules = FraudRules(far_from_stores_m=0)
    pickup = order(1, address=AWAY, mode=OrderMode.PICKUP)
    assert screened(pickup, rules=rules, catalogue=one_store()).signals == []


def test_an_address_without_coordinates_is_not_checked_for_distance() -> None:
    assert screened(order(1, address=Address(text="somewhere"))).signals == []


def test_shipping_is_not_checked_for_distance_by_default() -> None:
    assert screened(order(1, mode=OrderMode.SHIP, address=BEIJING)).signals == []


# ---------------------------------------------------------------- blocklists


def test_a_blocked_phone_is_held_whatever_its_spacing() -> None:
    rules = FraudRules(blocked_phones=frozenset({"+86 138 0000 0000"}))
    screening = screened(order(1), rules=rules)
    assert rules_of(screening) == {"BLOCKED_PHONE"}
    assert screening.held


def test_a_phone_not_on_the_blocklist_is_not_blocked() -> None:
    rules = FraudRules(blocked_phones=frozenset({"+8613800000001"}))
    assert screened(order(1), rules=rules).signals == []


def test_a_blocked_address_is_held_whatever_its_case_and_spacing() -> None:
    rules = FraudRules(blocked_addresses=frozenset({"88 nanjing   RD"}))
    screening = screened(order(1), rules=rules)
    assert rules_of(screening) == {"BLOCKED_ADDRESS"}
    assert screening.held
    other = FraudRules(blocked_addresses=frozenset({"88 Nanjing Road"}))
    assert screened(order(1), rules=other).signals == []


# ---------------------------------------------------------------- first order


def test_a_new_customers_first_order_at_the_high_value_limit_is_flagged() -> None:
    limit = DEFAULTS.first_order_high_value
    screening = screened(order(1, total=limit))
    assert rules_of(screening) == {"FIRST_ORDER_HIGH_VALUE"}
    assert screening.signals[0].detail == (
        f"first order of this customer totals {limit} (at least {limit})"
    )
    assert screened(order(1, total=limit - 1)).signals == []


def test_a_returning_customers_high_value_order_is_not_a_first_order() -> None:
    total = DEFAULTS.first_order_high_value
    assert screened(order(2, customer=CUSTOMER, total=total), regular(1, total)).signals == []


def test_a_customer_without_id_or_phone_counts_as_new() -> None:
    anonymous = order(1, customer=Customer(name="anon"), total=DEFAULTS.first_order_high_value)
    assert rules_of(screened(anonymous)) == {"FIRST_ORDER_HIGH_VALUE"}


# ---------------------------------------------------------------- score and threshold


def test_the_score_is_the_sum_of_the_signals_points() -> None:
    subject = order(9, address=BEIJING, total=DEFAULTS.first_order_high_value)
    screening = screened(subject)
    assert rules_of(screening) == {"FAR_FROM_STORES", "FIRST_ORDER_HIGH_VALUE"}
    assert screening.score == (
        DEFAULTS.far_from_stores_points + DEFAULTS.first_order_high_value_points
    )
    assert screening.score == sum(signal.points for signal in screening.signals)


@pytest.mark.parametrize(("threshold", "held"), [(45, True), (46, False)])
def test_a_score_at_the_threshold_is_held_and_below_it_is_not(threshold: int, held: bool) -> None:
    subject = order(9, address=BEIJING, total=DEFAULTS.first_order_high_value)
    screening = screened(subject, rules=FraudRules(threshold=threshold))
    assert (screening.score, screening.held) == (45, held)


def test_a_rule_with_no_points_is_off() -> None:
    rules = FraudRules(far_from_stores_points=0)
    assert screened(order(1, address=BEIJING), rules=rules).signals == []


# ---------------------------------------------------------------- hold


def test_hold_carries_the_score_and_has_a_deterministic_id() -> None:
    subject = order(1)
    screening = screened(subject, rules=FraudRules(blocked_phones=frozenset({"+8613800000000"})))
    held = hold(subject, screening, threshold=60, sequence=2, causation_id="e-1", now=NOW)
    again = hold(
        subject, screening, threshold=60, sequence=2, causation_id="e-1", now=datetime.now(UTC)
    )
    assert held.event_id == again.event_id == deterministic_id("e-1", "OrderHeld")
    assert (held.risk_score, held.threshold, held.signals) == (100, 60, screening.signals)
    assert (held.order_id, held.channel, held.external_id) == ("o-1", "webshop", "1001")
    assert (held.sequence, held.causation_id, held.correlation_id) == (2, "e-1", "o-1")
    assert (held.actor.kind, held.actor.id) == (ActorKind.SYSTEM, "fraud")
    assert held.occurred_at == held.recorded_at == NOW


# ---------------------------------------------------------------- rules file


def rules_file(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "fraud.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


def test_no_rules_file_means_the_defaults() -> None:
    assert load_rules(None) == FraudRules()


def test_a_rules_file_overrides_defaults_and_normalises_blocklists(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        {
            "threshold": 80,
            "blocked_phones": ["+86 138-0000-0000"],
            "far_from_stores_modes": ["ship"],
        },
    )
    rules = load_rules(path)
    assert rules.threshold == 80
    assert rules.blocked_phones == frozenset({"+8613800000000"})
    assert rules.far_from_stores_modes == frozenset({OrderMode.SHIP})
    assert rules.window_minutes == DEFAULTS.window_minutes


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"threshold": "high"}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"velocity_phone_points": -5}, "velocity_phone_points"),
        ({"first_order_high_value": 500.0}, "first_order_high_value"),
        ({"velocity_phone_limt": 3}, "velocity_phone_limt"),
        ({"blocked_phones": ["+861", 2]}, "blocked_phones.1"),
        ({"far_from_stores_modes": ["teleport"]}, "far_from_stores_modes.0"),
    ],
)
def test_a_bad_rules_file_names_the_file_and_the_field(
    tmp_path: Path, content: object, field: str
) -> None:
    path = rules_file(tmp_path, content)
    with pytest.raises(FraudRulesError) as caught:
        load_rules(path)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path}: {field}: ")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_rules_file_that_is_not_a_json_object_names_the_file(
    tmp_path: Path, content: str
) -> None:
    path = rules_file(tmp_path, content)
    with pytest.raises(FraudRulesError, match=str(path)):
        load_rules(path)


def test_a_missing_rules_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FraudRulesError, match="absent.json"):
        load_rules(tmp_path / "absent.json")


# ---------------------------------------------------------------- properties

_orders = st.builds(
    lambda n, minutes, phone, device, total, far: order(
        n,
        minutes=minutes,
        customer=Customer(phone=phone),
        device_id=device,
        total=total,
        address=BEIJING if far else elsewhere(n % 2),
    ),
    st.integers(0, 12),
    st.integers(-90, 30),
    st.sampled_from(["+861", "+862"]),
    st.sampled_from([None, "d1"]),
    st.integers(0, 200_000),
    st.booleans(),
)
_rules = st.builds(
    FraudRules,
    threshold=st.integers(1, 200),
    velocity_phone_limit=st.integers(0, 4),
    velocity_address_limit=st.integers(0, 4),
    velocity_device_limit=st.integers(0, 4),
    amount_outlier_factor=st.floats(0.1, 10),
    first_order_high_value=st.integers(0, 200_000),
    velocity_phone_points=st.integers(0, 100),
    amount_outlier_points=st.integers(0, 100),
)


@given(st.lists(_orders, max_size=12), _orders, _rules)
def test_the_score_is_never_negative_and_decides_the_hold(
    previous: list[OrderReceived], subject: OrderReceived, rules: FraudRules
) -> None:
    screening = screened(subject, *previous, rules=rules)
    assert screening.score >= 0
    assert screening.score == sum(signal.points for signal in screening.signals)
    assert screening.held == (screening.score >= rules.threshold)


@given(st.lists(_orders, max_size=12), _orders, _orders, _rules)
def test_more_history_never_lowers_the_velocity_score(
    previous: list[OrderReceived], extra: OrderReceived, subject: OrderReceived, rules: FraudRules
) -> None:
    def velocity(screening: Screening) -> int:
        return sum(s.points for s in screening.signals if s.rule.startswith("VELOCITY_"))

    assert velocity(screened(subject, *previous, extra, rules=rules)) >= velocity(
        screened(subject, *previous, rules=rules)
    )


def test_orders_through_one_virtual_number_are_different_buyers_not_velocity() -> None:
    """A platform's relay number (隐私号 13012345678_8421) is shared by many buyers, each
    with an extension: many orders through it are no phone velocity, a blocklisted relay
    holds nobody, and each buyer on it is their own customer."""
    relay = "13012345678"

    def via_relay(n: int) -> OrderReceived:
        customer = Customer(name=f"buyer {n}", phone=relay, phone_extension=f"{8400 + n}")
        return order(n, minutes=-n, customer=customer, address=elsewhere(n))

    previous = [via_relay(n) for n in (1, 2, 3, 4, 5)]
    assert "VELOCITY_PHONE" not in rules_of(screened(via_relay(6), *previous))
    blocked = FraudRules(blocked_phones=frozenset({relay}))
    assert "BLOCKED_PHONE" not in rules_of(screened(via_relay(6), rules=blocked))
    assert customer_key(via_relay(1)) != customer_key(via_relay(2))
    same_phone = [order(n, minutes=-n, address=elsewhere(n)) for n in (1, 2, 3)]
    assert "VELOCITY_PHONE" in rules_of(screened(order(4), *same_phone))  # a real phone still
