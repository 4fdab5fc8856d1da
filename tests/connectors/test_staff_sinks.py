"""The staff alerts' adapters against local fakes: the ESC/POS ticket's bytes and a real TCP
"printer", and a fake WeCom group robot that checks key, message type and size."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from connectors.escpos import CUT, INIT, ReceiptPrinter, kitchen_ticket
from connectors.outbound import PermanentFailure, TransientFailure
from connectors.staff_messages import markdown
from connectors.wecom_bot import MARKDOWN_MAX, TEXT_MAX, WeComRobot
from events.models import OrderMode
from events.staff_alerts import AlertKind, SinkKind, StaffAlert, TicketLine
from tests.connectors.fake_staff_sinks import (
    ROBOT_KEY,
    FakePrinter,
    FakeRobot,
    fake_printer,
    fake_robot,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _alert(**overrides: object) -> StaffAlert:
    fields: dict[str, object] = dict(
        key="k-1", kind=AlertKind.NEW_ORDER, sink="stores.S01.printer",
        sink_kind=SinkKind.PRINTER, cause_event_id="e-1",
        caused_at=datetime(2026, 12, 6, 4, 0, tzinfo=UTC), location="S01", order_id="o-1",
        channel="meituan", external_id="88012", mode=OrderMode.DINE_IN, table="7",
        due_at=datetime(2026, 12, 6, 4, 30, tzinfo=UTC),
        lines=[
            TicketLine(name="猪肉白菜水饺", quantity="2", options=["少辣", "加醋"]),
            TicketLine(name="COLA-330", quantity="1"),
        ],
    )  # fmt: skip
    fields.update(overrides)
    return StaffAlert.model_validate(fields)


@pytest.fixture
def robot() -> Iterator[FakeRobot]:
    with fake_robot() as running:
        yield running


@pytest.fixture
def printer() -> Iterator[FakePrinter]:
    with fake_printer() as running:
        yield running


# ---------------------------------------------------------------- ESC/POS


def test_ticket_starts_initialised_ends_cut_and_reads_in_gb18030() -> None:
    ticket = kitchen_ticket(_alert(), zone=SHANGHAI)
    assert ticket.startswith(INIT) and ticket.endswith(CUT)
    assert CUT == b"\x1dV\x42\x00"
    text = ticket.decode("gb18030")
    assert "88012" in text and "meituan" in text
    assert "猪肉白菜水饺 × 2 (少辣, 加醋)" in text and "COLA-330 × 1" in text
    assert "堂食 7号桌" in text and "12:30" in text  # due at 04:30 UTC, shown in Shanghai
    assert "猪肉".encode("gb18030") in ticket and "猪肉".encode() not in ticket


def test_ticket_goes_to_a_real_tcp_printer_whole(printer: FakePrinter) -> None:
    ticket = kitchen_ticket(_alert(), zone=SHANGHAI)
    ReceiptPrinter(address=printer.address, timeout_s=2).print(ticket)
    ReceiptPrinter(address=printer.address, timeout_s=2).print(ticket)
    _until(lambda: len(printer.tickets) == 2)
    assert printer.tickets == [ticket, ticket]


def test_a_printer_that_refuses_the_connection_is_a_transient_failure() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(TransientFailure, match=f"127.0.0.1:{port}"):
            ReceiptPrinter(address=f"127.0.0.1:{port}", timeout_s=1).print(b"\x1b@")


def test_a_printer_that_stops_taking_bytes_times_out_as_a_transient_failure() -> None:
    with socket.socket() as stuck:  # accepts, never reads: the send fills the buffers, waits
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(1)
        address = f"127.0.0.1:{stuck.getsockname()[1]}"
        with pytest.raises(TransientFailure, match="timed out"):
            ReceiptPrinter(address=address, timeout_s=0.3).print(b"\x1b@" * 16_000_000)


# ---------------------------------------------------------------- WeCom robot


def _parcel_in_trouble() -> StaffAlert:
    return _alert(
        kind=AlertKind.SHIPMENT_EXCEPTION, mode=None, table=None, due_at=None, lines=[],
        channel="tmall", external_id="TB00077", carrier="sf", tracking_number="SF1234",
        shipment_status="returned_to_sender", carrier_status="648", description="客户拒收",
        place="深圳南山",
    )  # fmt: skip


def test_a_parcel_in_trouble_reads_on_a_ticket_and_in_a_robots_message() -> None:
    alert = _parcel_in_trouble()
    ticket = kitchen_ticket(alert, zone=SHANGHAI)
    assert ticket.startswith(INIT) and ticket.endswith(CUT)
    printed = ticket.decode("gb18030")
    assert "快递异常 #TB00077" in printed and "sf SF1234" in printed
    assert "退回寄件人 12-06 12:00" in printed  # at 04:00 UTC, shown in Shanghai
    assert "648 客户拒收" in printed and "深圳南山" in printed and "S01" in printed
    title, *rest = markdown(alert, zone=SHANGHAI).splitlines()
    assert title == '<font color="warning">**【快递异常】tmall #TB00077**</font>'
    assert "> sf SF1234" in rest and "> 地点 深圳南山" in rest


def _robot(robot: FakeRobot, key: str = ROBOT_KEY) -> WeComRobot:
    return WeComRobot(key=SecretStr(key), api_url=robot.url)


def test_markdown_reaches_the_robot_with_its_key(robot: FakeRobot) -> None:
    _robot(robot).send_markdown(markdown(_alert(), zone=SHANGHAI))
    [(key, body)] = robot.messages
    assert key == ROBOT_KEY and body["msgtype"] == "markdown"
    assert "88012" in body["markdown"]["content"] and "猪肉白菜水饺" in body["markdown"]["content"]


def test_a_text_message_mentions_the_mobiles(robot: FakeRobot) -> None:
    _robot(robot).send_text("新订单 88012", mention=("+8613800001111",))
    [(_, body)] = robot.messages
    assert body == {
        "msgtype": "text",
        "text": {"content": "新订单 88012", "mentioned_mobile_list": ["13800001111"]},
    }


def test_long_content_is_cut_to_the_robots_byte_limits(robot: FakeRobot) -> None:
    many = _alert(lines=[TicketLine(name=f"鲜虾云吞面{n}", quantity="1") for n in range(400)])
    _robot(robot).send_markdown(markdown(many, zone=SHANGHAI))
    _robot(robot).send_text("饺" * 2000)
    assert robot.refused == []
    (_, md), (_, text) = robot.messages
    assert MARKDOWN_MAX - 3 <= len(md["markdown"]["content"].encode()) <= MARKDOWN_MAX
    assert len(text["text"]["content"].encode()) <= TEXT_MAX
    assert md["markdown"]["content"].endswith("…")


def test_over_the_rate_limit_is_transient_a_wrong_key_permanent_and_never_shown(
    robot: FakeRobot,
) -> None:
    robot.answer_next = [45009]
    with pytest.raises(TransientFailure, match="45009"):
        _robot(robot).send_markdown("x")
    with pytest.raises(PermanentFailure, match="93000") as refused:
        _robot(robot, key="wrong-secret-key").send_markdown("x")
    assert "wrong-secret-key" not in refused.value.detail
    robot.answer_next = [45009]
    with pytest.raises(TransientFailure) as limited:
        _robot(robot).send_markdown("x")
    assert ROBOT_KEY not in limited.value.detail  # the fake echoes the key; it is scrubbed


def test_a_robot_that_cannot_be_reached_is_transient() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/cgi-bin/webhook/send"
        with pytest.raises(TransientFailure):
            WeComRobot(key=SecretStr(ROBOT_KEY), api_url=url).send_markdown("x")


def _until(condition: object, timeout_s: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.02)
    raise AssertionError("not within the time")
