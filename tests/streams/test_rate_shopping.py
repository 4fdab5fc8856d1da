"""Rate shopping (streams/rate_shopping.py): which quote is bought and why every other lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from events.shipping import Parcel, Party, Quote, ShipmentRequest, Temperature
from streams.rate_shopping import CarrierRule, Lost, Objective, RateChoice, ShippingRules, choose

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DEADLINE = NOW + timedelta(days=2)
ALL = frozenset(Temperature)


def request(**changes: object) -> ShipmentRequest:
    fields: dict[str, object] = {
        "reference": "o-1@W01",
        "sender": Party(name="W01", phone="1", city="杭州市", street="s", province="浙江省"),
        "recipient": Party(name="R", phone="2", city="深圳市", street="t", province="广东省"),
        "parcels": [Parcel(weight_g=1500, length_mm=300, width_mm=200, height_mm=100)],
    }
    return ShipmentRequest.model_validate(fields | changes)


def quote(
    carrier: str,
    price: int,
    days: float | None,
    *,
    service: str = "std",
    temperatures: frozenset[Temperature] = frozenset({Temperature.AMBIENT}),
    cod: bool = False,
) -> Quote:
    return Quote(
        carrier=carrier, service=service, service_name=service, price=price, currency="CNY",
        promised_by=None if days is None else NOW + timedelta(days=days),
        temperatures=temperatures, cash_on_delivery=cod,
    )  # fmt: skip


def lost(choice: RateChoice) -> dict[str, Lost]:
    return {f"{a.quote.carrier}:{a.quote.service}": a.lost for a in choice.alternatives}


def test_the_cheapest_quote_that_arrives_in_time_wins_and_the_others_say_why_they_lost() -> None:
    quotes = [quote("zto", 800, 3), quote("sf", 1400, 1), quote("jdl", 1200, 2)]
    choice = choose(request(), quotes, ShippingRules(), deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.chosen.carrier == "jdl"
    assert choice.price == 1200
    assert lost(choice) == {"zto:std": Lost.LATE, "sf:std": Lost.PRICE}


def test_when_nothing_arrives_in_time_the_cheapest_goes_late() -> None:
    quotes = [quote("zto", 800, 5), quote("sf", 1400, 4), quote("jdl", 1200, None)]
    choice = choose(request(), quotes, ShippingRules(), deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.chosen.carrier == "zto"
    assert set(lost(choice).values()) == {Lost.PRICE}


def test_chilled_goods_go_only_with_a_cold_chain_even_when_it_costs_more() -> None:
    cold = frozenset({Temperature.AMBIENT, Temperature.CHILLED, Temperature.FROZEN})
    quotes = [quote("zto", 800, 1), quote("sf", 2600, 1, service="cold", temperatures=cold)]
    choice = choose(request(temperature=Temperature.CHILLED), quotes, ShippingRules(),
                    deliver_by=DEADLINE)  # fmt: skip
    assert choice.chosen is not None and choice.chosen.service == "cold"
    assert lost(choice) == {"zto:std": Lost.TEMPERATURE}
    # The rules may narrow a carrier's own cold chain (no frozen by this one, say).
    rules = ShippingRules(
        carriers={"sf": CarrierRule(temperatures=frozenset({Temperature.CHILLED}))}
    )
    frozen = choose(request(temperature=Temperature.FROZEN), quotes, rules, deliver_by=DEADLINE)
    assert frozen.chosen is None and set(lost(frozen).values()) == {Lost.TEMPERATURE}


def test_cash_on_delivery_goes_only_with_a_carrier_that_collects() -> None:
    quotes = [quote("zto", 800, 1), quote("sf", 1400, 1, cod=True)]
    choice = choose(request(cod_amount=9900), quotes, ShippingRules(), deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.chosen.carrier == "sf"
    assert lost(choice) == {"zto:std": Lost.CASH_ON_DELIVERY}
    rules = ShippingRules(carriers={"sf": CarrierRule(cash_on_delivery=False)})
    assert choose(request(cod_amount=9900), quotes, rules, deliver_by=DEADLINE).chosen is None


def test_weight_volume_and_destination_rules_exclude_per_carrier_and_per_service() -> None:
    quotes = [
        quote("zto", 800, 1),
        quote("sf", 1000, 1, service="light"),
        quote("sf", 1300, 1, service="heavy"),
        quote("jdl", 900, 1),
        quote("easypost", 500, 1),
    ]
    rules = ShippingRules(carriers={
        "zto": CarrierRule(max_volume_cm3=5000),  # the parcel is 6,000 cm³
        "sf:light": CarrierRule(max_weight_g=1000),  # it weighs 1,500 g
        "jdl": CarrierRule(provinces=frozenset({"浙江省", "上海市"})),
        "easypost": CarrierRule(countries=frozenset({"US", "CA"})),
    })  # fmt: skip
    choice = choose(request(), quotes, rules, deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.chosen.service == "heavy"
    assert lost(choice) == {
        "zto:std": Lost.VOLUME,
        "sf:light": Lost.WEIGHT,
        "jdl:std": Lost.DESTINATION,
        "easypost:std": Lost.DESTINATION,
    }


def test_a_surcharge_and_a_disabled_carrier_change_the_choice() -> None:
    quotes = [quote("zto", 800, 1), quote("sf", 900, 1), quote("jdl", 700, 1)]
    rules = ShippingRules(carriers={
        "zto": CarrierRule(surcharge=200), "jdl": CarrierRule(enabled=False),
    })  # fmt: skip
    choice = choose(request(), quotes, rules, deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.chosen.carrier == "sf"
    assert lost(choice) == {"zto:std": Lost.PRICE, "jdl:std": Lost.DISABLED}
    [zto] = [a for a in choice.alternatives if a.quote.carrier == "zto"]
    assert zto.price == 1000 and "100 dearer" in zto.detail


def test_fastest_picks_the_earliest_promise_and_breaks_ties_by_price() -> None:
    quotes = [quote("zto", 800, 3), quote("sf", 1400, 1), quote("jdl", 1200, 1)]
    rules = ShippingRules(objective=Objective.FASTEST)
    choice = choose(request(), quotes, rules, deliver_by=None)
    assert choice.chosen is not None and choice.chosen.carrier == "jdl"
    assert lost(choice) == {"zto:std": Lost.SPEED, "sf:std": Lost.PRICE}


prices = st.integers(min_value=1, max_value=10_000)
days = st.one_of(st.none(), st.floats(min_value=0.5, max_value=6))


@given(st.lists(st.tuples(prices, days), min_size=1, max_size=8))
def test_no_eligible_quote_on_time_is_cheaper_than_the_one_chosen(
    offered: list[tuple[int, float | None]],
) -> None:
    quotes = [quote(f"c{n}", price, day) for n, (price, day) in enumerate(offered)]
    choice = choose(request(), quotes, ShippingRules(), deliver_by=DEADLINE)
    assert choice.chosen is not None and choice.price is not None
    assert len(choice.alternatives) == len(quotes) - 1
    chosen_on_time = choice.chosen.promised_by is not None and choice.chosen.promised_by <= DEADLINE
    for alternative in choice.alternatives:
        promised = alternative.quote.promised_by
        on_time = promised is not None and promised <= DEADLINE
        if on_time or not chosen_on_time:
            assert alternative.price >= choice.price
        assert alternative.lost in {Lost.PRICE, Lost.LATE}
