"""How a staff alert reads (events/staff_alerts.py): plain text lines for an SMS or a WeCom text
message, and WeCom markdown. The kitchen ticket's own layout is `connectors.escpos`.

Times are shown in the stores' time zone; nothing personal is shown (the alert carries none).
"""

from __future__ import annotations

from datetime import tzinfo

from events.models import OrderMode
from events.staff_alerts import AlertKind, StaffAlert, TicketLine

TITLES = {
    AlertKind.NEW_ORDER: "新订单",
    AlertKind.HELD: "待审核订单",
    AlertKind.LOW_STOCK: "库存不足",
    AlertKind.SHIPMENT_EXCEPTION: "快递异常",
}
SHIPMENT_TROUBLE = {"exception": "派送异常", "returned_to_sender": "退回寄件人"}
MODES = {
    OrderMode.DINE_IN: "堂食",
    OrderMode.PICKUP: "自取",
    OrderMode.DELIVERY: "外卖",
    OrderMode.SHIP: "快递",
}


def mode_text(alert: StaffAlert) -> str:
    """堂食 3号桌 / 自取 / 外卖 (the table only for dine-in)."""
    if alert.mode is None:
        return ""
    shown = MODES[alert.mode]
    if alert.mode is OrderMode.DINE_IN and alert.table:
        shown += f" {alert.table}号桌"
    return shown


def line_text(line: TicketLine) -> str:
    options = f" ({', '.join(line.options)})" if line.options else ""
    return f"{line.name} × {line.quantity}{options}"


def text_lines(alert: StaffAlert, *, zone: tzinfo) -> list[str]:
    """The alert as lines of plain text, title first."""
    title = TITLES[alert.kind]
    if alert.kind is AlertKind.LOW_STOCK:
        return [
            f"【{title}】{alert.sku} @ {alert.location}",
            f"可售 {alert.available}(预警 {alert.threshold})",
            f"建议补货 {alert.reorder_quantity}",
        ]
    if alert.kind is AlertKind.SHIPMENT_EXCEPTION:
        return shipment_lines(alert, zone=zone)
    shown = [f"【{title}】{alert.channel} #{alert.external_id}"]
    if alert.location:
        shown.append(f"门店 {alert.location}")
    if alert.mode is not None:
        shown.append(mode_text(alert))
    if alert.due_at is not None:
        shown.append(f"取餐时间 {alert.due_at.astimezone(zone):%m-%d %H:%M}")
    if alert.kind is AlertKind.HELD:
        shown.append(f"风险分 {alert.risk_score}(阈值 {alert.threshold})")
        shown.extend(f"- {signal}" for signal in alert.signals)
    shown.extend(line_text(line) for line in alert.lines)
    return shown


def shipment_lines(alert: StaffAlert, *, zone: tzinfo) -> list[str]:
    """A parcel in trouble: the order, the parcel, what the carrier said, where and when."""
    status = alert.shipment_status or ""
    said = " ".join(x for x in (alert.carrier_status, alert.description) if x)
    shown = [
        f"【{TITLES[alert.kind]}】{alert.channel} #{alert.external_id}",
        f"发货地 {alert.location}",
        f"{alert.carrier} {alert.tracking_number}",
        f"{SHIPMENT_TROUBLE.get(status, status)} {alert.caused_at.astimezone(zone):%m-%d %H:%M}",
    ]
    if said:
        shown.append(f"承运商: {said}")
    if alert.place:
        shown.append(f"地点 {alert.place}")
    return shown


def markdown(alert: StaffAlert, *, zone: tzinfo) -> str:
    """The alert in the WeCom robot's markdown subset: a bold title, then quoted lines."""
    title, *rest = text_lines(alert, zone=zone)
    colour = "info" if alert.kind is AlertKind.NEW_ORDER else "warning"
    return "\n".join([f'<font color="{colour}">**{title}**</font>', *(f"> {r}" for r in rest)])


def fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (on a character boundary), marked with …
    where it was cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - len("…".encode())].decode(errors="ignore") + "…"
