"""`oms simulate`: realistic order traffic through the real connectors.

Profiles:
- restaurant: 5 stores in Shanghai; Meituan, Ele.me, WeChat mini-program and phone; delivery,
  pickup and dine-in; lunch and dinner peaks.
- retail: Tmall, JD, the web shop (Shopify-shaped and WooCommerce) and Square POS in stores.
- peak: retail on a Double-11 night: the rate climbs to 3.5x the average around midnight.

The run compresses one day into `duration` seconds; the rate follows the profile's curve and
averages `rate` orders/s. The clock is not compressed: an order's times are the moment it is
sent, never later. A share of the traffic is duplicated (a channel re-sending), revised
(`OrderModified`) or malformed (dead-lettered), as real channels do. External ids carry the
run's id, so a second run sends new orders; duplicates and revisions reuse the external id of
an order sent earlier in the same run, as they are meant to.
"""

from __future__ import annotations

import importlib
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from connectors.base import Connector, PayloadRejected
from connectors.registry import available
from connectors.samples import SampleLine, SampleOrder
from events.models import DeadLetter, OrderMode, utc_now
from infra.publisher import Publisher

# (id, name, latitude, longitude)
STORES = [
    ("S01", "人民广场店", 31.2304, 121.4737),
    ("S02", "徐家汇店", 31.1950, 121.4370),
    ("S03", "陆家嘴店", 31.2397, 121.4998),
    ("S04", "静安寺店", 31.2243, 121.4455),
    ("S05", "五角场店", 31.3017, 121.5130),
]
DISHES = [
    ("DUMPLING-12", "猪肉白菜水饺 12只", 2800),
    ("NOODLE-BEEF", "红烧牛肉面", 3250),
    ("RICE-KUNGPAO", "宫保鸡丁饭", 2600),
    ("SOUP-HOTSOUR", "酸辣汤", 1550),
    ("BUN-PORK-4", "鲜肉包 4只", 1000),
    ("TEA-OOLONG", "冻顶乌龙茶", 1200),
    ("WONTON-SHRIMP", "鲜虾馄饨", 2200),
    ("GREENS-GARLIC", "蒜蓉时蔬", 1800),
]
PRODUCTS = [
    ("TEA-GIFT-M", "中秋茶叶礼盒", 19800),
    ("MUG-CERAMIC", "手绘陶瓷杯", 6800),
    ("TEA-LONGJING-250", "明前龙井 250g", 32800),
    ("KETTLE-IRON", "铸铁茶壶", 45900),
    ("CUP-SET-6", "青瓷茶杯六只装", 12800),
    ("TEA-PUER-357", "普洱饼茶 357g", 26800),
]
NAMES = ["王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆", "赵磊", "黄婷", "周杰", "吴霞"]
STREETS = ["南京东路", "淮海中路", "徐家汇路", "世纪大道", "延安西路", "四平路", "武康路"]


@dataclass(frozen=True)
class Profile:
    channels: dict[str, float]  # channel -> share of orders
    modes: dict[str, dict[OrderMode, float]]  # channel -> mode -> share
    catalogue: list[tuple[str, str, int]]
    curve: Callable[[float], float]  # hour of day -> relative rate
    duplicate_share: float = 0.05
    revision_share: float = 0.03
    malformed_share: float = 0.02


def _bell(hour: float, peak: float, width: float) -> float:
    return math.exp(-(((hour - peak) / width) ** 2))


def _restaurant_curve(hour: float) -> float:
    return 0.15 + 1.6 * _bell(hour, 12.2, 1.1) + 1.9 * _bell(hour, 18.6, 1.3)


def _retail_curve(hour: float) -> float:
    return 0.25 + 0.8 * _bell(hour, 10.5, 2.5) + 1.2 * _bell(hour, 21.0, 2.0)


def _double_eleven_curve(hour: float) -> float:
    # The first minutes of 11.11 are the surge; hour 0 and hour 24 are both midnight.
    return 0.4 + 6.0 * max(_bell(hour, 0.3, 0.6), _bell(hour, 24.3, 0.6)) + _retail_curve(hour)


_DELIVERY_PICKUP = {OrderMode.DELIVERY: 0.8, OrderMode.PICKUP: 0.2}
_ONLINE = {OrderMode.SHIP: 1.0}
PROFILES: dict[str, Profile] = {
    "restaurant": Profile(
        channels={"meituan": 0.4, "eleme": 0.3, "wechat": 0.2, "phone": 0.1},
        modes={
            "meituan": _DELIVERY_PICKUP,
            "eleme": _DELIVERY_PICKUP,
            "wechat": {OrderMode.DINE_IN: 0.45, OrderMode.PICKUP: 0.3, OrderMode.DELIVERY: 0.25},
            "phone": {OrderMode.DELIVERY: 0.6, OrderMode.PICKUP: 0.4},
        },
        catalogue=DISHES,
        curve=_restaurant_curve,
    ),
    "retail": Profile(
        channels={"tmall": 0.35, "jd": 0.3, "webshop": 0.12, "woocommerce": 0.08, "square": 0.15},
        modes={
            "tmall": _ONLINE,
            "jd": _ONLINE,
            "webshop": _ONLINE,
            "woocommerce": _ONLINE,
            "square": {OrderMode.DINE_IN: 0.7, OrderMode.PICKUP: 0.3},
        },
        catalogue=PRODUCTS,
        curve=_retail_curve,
    ),
}
PROFILES["peak"] = Profile(
    channels=PROFILES["retail"].channels,
    modes=PROFILES["retail"].modes,
    catalogue=PRODUCTS,
    curve=_double_eleven_curve,
    duplicate_share=0.08,  # channels retry more under load
)


# How long the restaurant profile's kitchens take from accepting an order to having it ready
# (`restaurant_prep_seconds`; `oms bench eta` learns it back). The slowest dish sets the pace,
# each further item adds a little; stores differ in speed, lunch and dinner rushes (stronger at
# weekends) slow every kitchen, each ticket already open adds its share, and the rest is
# lognormal noise around the median.
STORE_SPEED = {"S01": 0.85, "S02": 1.0, "S03": 1.3, "S04": 0.95, "S05": 1.15}
DISH_MINUTES = {
    "DUMPLING-12": 10.0,
    "NOODLE-BEEF": 13.0,
    "RICE-KUNGPAO": 11.0,
    "SOUP-HOTSOUR": 6.0,
    "BUN-PORK-4": 5.0,
    "TEA-OOLONG": 2.0,
    "WONTON-SHRIMP": 8.0,
    "GREENS-GARLIC": 7.0,
}
SECONDS_PER_EXTRA_ITEM = 20.0
SECONDS_PER_OPEN_TICKET = 40.0
PREP_NOISE_SIGMA = 0.15  # of the lognormal: about ±28 % around the median for 9 in 10 orders


def kitchen_rush(weekday: int, hour: float) -> float:
    """How much slower a kitchen works at this hour of the week (1 = quiet): lunch and dinner,
    a fifth stronger on Saturday and Sunday (weekday 5, 6)."""
    weekend = 1.2 if weekday >= 5 else 1.0
    return 1.0 + weekend * (0.3 * _bell(hour, 12.2, 1.1) + 0.4 * _bell(hour, 18.6, 1.3))


def restaurant_prep_seconds(
    rng: random.Random,
    *,
    store: str,
    items: list[tuple[str, int]],
    at: datetime,
    open_tickets: int,
) -> float:
    """A kitchen's time from accepting an order of `items` (sku, quantity) at `at` to having
    it ready, with `open_tickets` other tickets open at the store."""
    slowest = max(DISH_MINUTES.get(sku, 8.0) for sku, _ in items) * 60
    extra = SECONDS_PER_EXTRA_ITEM * (sum(quantity for _, quantity in items) - 1)
    rush = kitchen_rush(at.weekday(), at.hour + at.minute / 60)
    median = (slowest + extra) * STORE_SPEED.get(store, 1.0) * rush
    return median * rng.lognormvariate(0, PREP_NOISE_SIGMA) + SECONDS_PER_OPEN_TICKET * max(
        0, open_tickets
    )


SendKind = Literal["order", "duplicate", "revision", "malformed"]


@dataclass(frozen=True)
class Send:
    """One payload a channel sends `due_s` seconds into the run; no time in it is later."""

    due_s: float
    channel: str
    kind: SendKind
    body: bytes
    headers: dict[str, str]


@dataclass
class SimulationReport:
    run_id: str = ""
    generated: int = 0
    published: int = 0
    duplicates: int = 0
    revisions: int = 0
    malformed: int = 0
    by_channel: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0
    dead_lettered: int = 0
    elapsed_s: float = 0.0
    peak_rate: float = 0.0


@dataclass
class _Sent:
    """An order sent earlier in the run, as its channel last sent it."""

    channel: str
    order: SampleOrder
    body: bytes
    headers: dict[str, str]
    revision: int = 0


def new_run_id() -> str:
    """A run's own part of the external ids: random, so runs never share one."""
    return uuid.uuid4().hex[:8].upper()


def _pick(rng: random.Random, shares: dict[Any, float]) -> Any:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def _mean_shape(profile: Profile) -> float:
    return sum(profile.curve(h / 10) for h in range(240)) / 240


def peak_rate(profile: Profile, rate: float) -> float:
    """Orders/s at the busiest moment of the profile's day when it averages `rate`."""
    return rate * max(profile.curve(h / 10) for h in range(241)) / _mean_shape(profile)


def sample_order(
    rng: random.Random,
    profile: Profile,
    *,
    channel: str,
    number: int,
    placed_at: datetime,
    run_id: str,
) -> SampleOrder:
    """The `number`th order of a run for `channel`: lines from the profile's catalogue, a store,
    a customer, fees and a discount, drawn from `rng` (the same `rng` state gives the same
    order). The external id is the channel's prefix, the run id and `number`."""
    mode = _pick(rng, profile.modes[channel])
    store_id, _, lat, lon = rng.choice(STORES)
    items = rng.sample(profile.catalogue, k=rng.randint(1, 4))
    lines = [SampleLine(sku, name, rng.randint(1, 3), price) for sku, name, price in items]
    delivery = mode in (OrderMode.DELIVERY, OrderMode.SHIP)
    restaurant = profile.catalogue is DISHES
    subtotal = sum(line.quantity * line.unit_price for line in lines)
    return SampleOrder(
        external_id=f"{channel[:2].upper()}{run_id}{number:07d}",
        store=store_id,
        # the phone form has minutes only
        placed_at=placed_at.replace(microsecond=0, second=placed_at.second * (channel != "phone")),
        mode=mode,
        lines=lines,
        customer_name=rng.choice(NAMES),
        customer_phone=f"138{rng.randint(10_000_000, 99_999_999)}",
        delivery_fee=(rng.choice([0, 300, 500]) if restaurant else rng.choice([0, 0, 1000]))
        if delivery
        else 0,
        packaging_fee=rng.choice([100, 200]) if restaurant and mode != OrderMode.DINE_IN else 0,
        discount=min(rng.choice([0, 0, 0, 300, 500, 1000]), subtotal // 2),
        address_text=f"上海市{rng.choice(STREETS)}{rng.randint(1, 999)}号" if delivery else None,
        latitude=round(lat + rng.uniform(-0.03, 0.03), 6) if delivery else None,
        longitude=round(lon + rng.uniform(-0.03, 0.03), 6) if delivery else None,
        notes=rng.choice([None, None, "少辣", "不要香菜", "请尽快送达", "放门口"]),
    )


def traffic(
    *,
    profile_name: str,
    rate: float,
    duration_s: float,
    start: datetime,
    run_id: str,
    rng: random.Random,
) -> Iterator[Send]:
    """Every payload of a run, in the order they are due. Pure: the start, the run id and the
    randomness are passed in, so the same three give the same traffic. A payload due at `t`
    carries times no later than `start + t` (to the second, as the platforms write them)."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    profile = PROFILES[profile_name]
    samplers: dict[str, Callable[..., tuple[bytes, dict[str, str]]]] = {
        channel: importlib.import_module(f"connectors.{channel}").sample_payload
        for channel in profile.channels
    }
    mean_shape = _mean_shape(profile)
    sent: list[_Sent] = []  # later duplicates and revisions pick from these
    number = 0
    due = 0.0
    while True:
        due += mean_shape / (rate * profile.curve(due / duration_s * 24))
        if due >= duration_s:
            return
        at = (start + timedelta(seconds=due)).replace(microsecond=0)
        roll = rng.random()
        if roll < profile.duplicate_share and sent:
            again = rng.choice(sent)  # the channel sends it again
            yield Send(due, again.channel, "duplicate", again.body, again.headers)
            continue
        if roll < profile.duplicate_share + profile.revision_share and sent:
            earlier = rng.choice(sent)
            # Platforms write times to the second: a revision in the same second as the last
            # change would not read as later, so the oldest order is revised instead (none
            # when that one is as recent: the run's first second).
            if (earlier.order.modified_at or earlier.order.placed_at) >= at:
                earlier = sent[0]
            if (earlier.order.modified_at or earlier.order.placed_at) < at:
                first, *rest = earlier.order.lines  # the customer adds one more
                more = replace(first, quantity=first.quantity + 1)
                earlier.order = replace(earlier.order, lines=[more, *rest], modified_at=at)
                earlier.revision += 1
                earlier.body, earlier.headers = samplers[earlier.channel](
                    earlier.order, revision=earlier.revision
                )
                yield Send(due, earlier.channel, "revision", earlier.body, earlier.headers)
                continue
        channel = _pick(rng, profile.channels)
        order = sample_order(
            rng, profile, channel=channel, number=number, placed_at=at, run_id=run_id
        )
        number += 1
        body, headers = samplers[channel](order)
        if roll > 1 - profile.malformed_share:
            # cut off mid-payload, as a broken proxy might
            yield Send(due, channel, "malformed", body[: len(body) // 2], headers)
            continue
        if len(sent) < 5000:
            sent.append(_Sent(channel, order, body, headers))
        yield Send(due, channel, "order", body, headers)


def simulate(
    *,
    profile_name: str,
    rate: float,
    duration_s: float,
    publisher: Publisher,
    seed: int | None = None,
    run_id: str | None = None,
    on_tick: Callable[[SimulationReport], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> SimulationReport:
    """Send about `rate * duration_s` orders, shaped by the profile's day, then wait for acks.
    Each payload is sent no earlier than the times it carries. Without `run_id` the run draws
    its own: `seed` repeats the traffic, `seed` and `run_id` together repeat it exactly."""
    profile = PROFILES[profile_name]
    installed = available()
    connectors: dict[str, Connector] = {
        channel: installed[channel]() for channel in profile.channels
    }
    report = SimulationReport(run_id=run_id or new_run_id(), peak_rate=peak_rate(profile, rate))
    start = clock()
    for send in traffic(
        profile_name=profile_name,
        rate=rate,
        duration_s=duration_s,
        start=start,
        run_id=report.run_id,
        rng=random.Random(seed),
    ):
        due = start + timedelta(seconds=send.due_s)
        while (wait := (due - clock()).total_seconds()) > 0:
            if on_tick is not None:
                on_tick(report)  # a slow run still shows its progress
            sleep(min(wait, 0.5))
        report.generated += 1
        report.by_channel[send.channel] += 1
        report.duplicates += send.kind == "duplicate"
        report.revisions += send.kind == "revision"
        report.malformed += send.kind == "malformed"
        _send(connectors[send.channel], send, publisher=publisher, report=report, clock=clock)
        if on_tick is not None:
            on_tick(report)
    delivered = publisher.flush()
    report.acknowledged = delivered.acknowledged[publisher.settings.topics.intake]
    report.dead_lettered = delivered.acknowledged[publisher.settings.topics.dlq]
    report.elapsed_s = (clock() - start).total_seconds()
    return report


def _send(
    connector: Connector,
    send: Send,
    *,
    publisher: Publisher,
    report: SimulationReport,
    clock: Callable[[], datetime],
) -> None:
    try:
        event = connector.parse(send.body, received_at=clock(), headers=send.headers)
    except PayloadRejected as exc:
        publisher.dead_letter(
            DeadLetter.of(
                source=connector.name,
                source_ref=f"simulate:{report.run_id}:{report.generated}",
                reason=str(exc),
                raw=send.body,
            )
        )
        return
    publisher.intake(event)
    report.published += 1
