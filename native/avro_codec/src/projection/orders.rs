//! The order fold: `projections.orders.fold` in Rust. One event applied to an order's state
//! gives the next state, and the `order_lines` and `fulfilment_stages` rows it makes; the
//! status moves by `events.lifecycle.next_status`, handed in as a table (`Rules`).

use rustc_hash::{FxHashMap, FxHashSet};

use crate::value::Value;

/// An `orders` row (projections/schema.py ORDERS_COLUMNS, but the position); times as epoch
/// seconds.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct OrderState {
    pub(crate) order_id: String,
    pub(crate) channel: String,
    pub(crate) external_id: String,
    pub(crate) mode: String,
    pub(crate) status: String,
    pub(crate) currency: String,
    pub(crate) total: i64,
    pub(crate) line_count: i64,
    pub(crate) item_count: i64,
    pub(crate) customer_name: String,
    pub(crate) customer_phone: String,
    pub(crate) customer_key: String,
    pub(crate) address: String,
    pub(crate) city: String,
    pub(crate) region: String,
    pub(crate) location: String,
    pub(crate) priority_score: i64,
    pub(crate) promised_at: Option<i64>,
    pub(crate) accepted_at: Option<i64>,
    pub(crate) risk_score: i64,
    pub(crate) held: u8,
    pub(crate) held_at: Option<i64>,
    pub(crate) review_outcome: String,
    pub(crate) reviewed_at: Option<i64>,
    pub(crate) cancelled: u8,
    pub(crate) cancelled_by: String,
    pub(crate) cancel_reason: String,
    pub(crate) rejection_codes: Vec<String>,
    pub(crate) rejection_message: String,
    pub(crate) handed_over_at: Option<i64>,
    pub(crate) delivered_at: Option<i64>,
    pub(crate) refunded: i64,
    pub(crate) is_sale: u8,
    pub(crate) stage: String,
    pub(crate) stage_entered_at: i64,
    pub(crate) stage_seq: i64,
    pub(crate) line_skus: Vec<String>,
    pub(crate) line_names: Vec<String>,
    pub(crate) line_quantities: Vec<i64>,
    pub(crate) line_prices: Vec<i64>,
    pub(crate) line_locations: Vec<String>,
    /// What each line costs as its channel states it (`OrderLine.gross`, else quantity ×
    /// unit price); empty in a row stored before contract v4/v5.
    pub(crate) line_amounts: Vec<i64>,
    /// What each line's quantity counts (`OrderLine.unit`); empty before contract v5/v6.
    pub(crate) line_units: Vec<String>,
    /// Each line's exact quantity in millionths of its unit; empty before contract v5/v6.
    pub(crate) line_millionths: Vec<i64>,
    /// Each line's options as a ticket prints them ("少辣, 加蛋"); empty before migration 010.
    pub(crate) line_options: Vec<String>,
    /// A dine-in order's table and how many it seats (contract v4-v7).
    pub(crate) table_name: String,
    pub(crate) covers: i64,
    /// When the store said the order will be ready (`OrderAcceptedByStore.estimated_ready_at`).
    pub(crate) ready_by: Option<i64>,
    /// The lines before the order's last revision, as a ticket prints them.
    pub(crate) amended_from: Vec<String>,
    pub(crate) placed_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) version: i64,
}

/// What the fold takes from the lifecycle and the read model's rules.
pub(crate) struct Rules {
    /// `events.lifecycle.next_status` as a table: status -> event type -> next status, with
    /// the moves of an order that has no history yet under "".
    pub(crate) transitions: FxHashMap<String, FxHashMap<String, String>>,
    /// Statuses that undo a sale (rejected, cancelled).
    pub(crate) void: FxHashSet<String>,
    /// Statuses that end the order's flow: entering one closes the last stage, opens none.
    pub(crate) end_stages: FxHashSet<String>,
}

impl Rules {
    /// `events.lifecycle.next_status`: from `status` (None: no history yet; a status not in
    /// the table counts as none, as in `projections.orders.fold`).
    fn next_status(&self, status: Option<&str>, event_type: &str) -> String {
        let moves = status
            .and_then(|s| self.transitions.get(s))
            .or_else(|| self.transitions.get(""));
        match moves.and_then(|m| m.get(event_type)) {
            Some(target) => target.clone(),
            None => status.unwrap_or_default().to_owned(),
        }
    }
}

/// One `order_lines` row before it is written (the last of a batch per key wins).
pub(crate) struct LineRow {
    pub(crate) line_no: i64,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) price: i64,
    pub(crate) amount: i64,
    pub(crate) unit: String,
    pub(crate) millionths: i64,
    pub(crate) location: String,
    pub(crate) is_sale: u8,
}

/// One `fulfilment_stages` row before it is written.
pub(crate) struct StageRow {
    pub(crate) entered_seq: i64,
    pub(crate) stage: String,
    pub(crate) entered_at: i64,
    pub(crate) left_at: Option<i64>,
    pub(crate) next_stage: String,
}

pub(crate) struct OrderChange {
    pub(crate) row: OrderState,
    pub(crate) lines: Vec<LineRow>,
    pub(crate) stages: Vec<StageRow>,
}

/// `projections.orders.fold`: one event applied to an order's state (None: the order has none
/// yet), `at` when OrderStream recorded it; None when the event was applied before.
pub(crate) fn fold_order(
    state: Option<&OrderState>,
    ev: &Value,
    event_type: &str,
    at: i64,
    rules: &Rules,
) -> Option<OrderChange> {
    let sequence = ev.get("sequence").int();
    if let Some(state) = state {
        if sequence <= state.version {
            return None;
        }
    }
    let mut row = match state {
        Some(state) => state.clone(),
        None => OrderState {
            order_id: ev.get("order_id").s().to_owned(),
            stage_entered_at: at,
            placed_at: at,
            updated_at: at,
            ..Default::default()
        },
    };
    let base_status = row.status.clone();
    let channel = ev.get("channel").s();
    if !channel.is_empty() {
        row.channel = channel.to_owned();
    }
    row.external_id = ev.get("external_id").s().to_owned();
    apply_event(&mut row, ev, event_type, at);
    row.status = rules.next_status(state.map(|_| base_status.as_str()), event_type);
    row.region = if row.city.is_empty() {
        row.location.clone()
    } else {
        row.city.clone()
    };
    if rules.void.contains(&row.status) {
        row.is_sale = 0;
    } else if !rules.void.contains(&base_status) {
        row.is_sale = row.accepted_at.is_some() as u8;
    }
    row.version = sequence;
    row.updated_at = at;
    let stages = stage_rows(state, &mut row, at, rules);
    let lines = line_rows(state, &row);
    Some(OrderChange { row, lines, stages })
}

/// Close the stage the order leaves and open the one it enters (none for an end status).
fn stage_rows(
    old: Option<&OrderState>,
    row: &mut OrderState,
    at: i64,
    rules: &Rules,
) -> Vec<StageRow> {
    let mut stages = Vec::new();
    if old.is_some_and(|old| old.status == row.status) {
        return stages;
    }
    if let Some(old) = old {
        if !old.stage.is_empty() {
            stages.push(StageRow {
                entered_seq: old.stage_seq,
                stage: old.stage.clone(),
                entered_at: old.stage_entered_at,
                left_at: Some(at),
                next_stage: row.status.clone(),
            });
        }
    }
    if !rules.end_stages.contains(&row.status) {
        stages.push(StageRow {
            entered_seq: row.version,
            stage: row.status.clone(),
            entered_at: at,
            left_at: None,
            next_stage: String::new(),
        });
        row.stage = row.status.clone();
        row.stage_entered_at = at;
        row.stage_seq = row.version;
    } else {
        row.stage = String::new();
        row.stage_seq = 0;
    }
    stages
}

/// The order's lines as sales facts, when anything they show changed; a line a revision
/// removed gets a row with quantity 0 that is not a sale.
fn line_rows(old: Option<&OrderState>, row: &OrderState) -> Vec<LineRow> {
    let mut lines = Vec::new();
    if old.is_some_and(|old| same_line_facts(old, row)) {
        return lines;
    }
    let count = row.line_skus.len();
    let before = old.map_or(0, |old| old.line_skus.len());
    for n in 0..count.max(before) {
        lines.push(if n < count {
            let location = row.line_locations.get(n).map_or("", String::as_str);
            let quantity = row.line_quantities.get(n).copied().unwrap_or(0);
            let price = row.line_prices.get(n).copied().unwrap_or(0);
            LineRow {
                line_no: n as i64,
                sku: row.line_skus[n].clone(),
                name: row.line_names.get(n).cloned().unwrap_or_default(),
                quantity,
                price,
                amount: row.line_amounts.get(n).copied().unwrap_or(quantity * price),
                unit: row.line_units.get(n).cloned().unwrap_or_else(|| EACH.to_owned()),
                millionths: row
                    .line_millionths
                    .get(n)
                    .copied()
                    .unwrap_or(quantity * MILLIONTHS),
                location: if location.is_empty() {
                    row.location.clone()
                } else {
                    location.to_owned()
                },
                is_sale: row.is_sale,
            }
        } else {
            let old = old.unwrap();
            LineRow {
                line_no: n as i64,
                sku: old.line_skus[n].clone(),
                name: old.line_names.get(n).cloned().unwrap_or_default(),
                quantity: 0,
                price: 0,
                amount: 0,
                unit: old.line_units.get(n).cloned().unwrap_or_else(|| EACH.to_owned()),
                millionths: 0,
                location: row.location.clone(),
                is_sale: 0,
            }
        });
    }
    lines
}

fn same_line_facts(a: &OrderState, b: &OrderState) -> bool {
    a.line_skus == b.line_skus
        && a.line_names == b.line_names
        && a.line_quantities == b.line_quantities
        && a.line_prices == b.line_prices
        && a.line_locations == b.line_locations
        && a.location == b.location
        && a.region == b.region
        && a.currency == b.currency
        && a.channel == b.channel
        && a.mode == b.mode
        && a.customer_key == b.customer_key
        && a.placed_at == b.placed_at
        && a.is_sale == b.is_sale
        && a.line_amounts == b.line_amounts
        && a.line_units == b.line_units
        && a.line_millionths == b.line_millionths
}

fn or_at(current: Option<i64>, at: i64) -> Option<i64> {
    Some(current.unwrap_or(at))
}

/// `projections.orders.ticket_lines`: the row's lines as a kitchen ticket prints them,
/// "2× 红烧牛肉面 (少辣)".
fn ticket_lines(row: &OrderState) -> Vec<String> {
    row.line_names
        .iter()
        .zip(&row.line_quantities)
        .enumerate()
        .map(|(n, (name, quantity))| match row.line_options.get(n) {
            Some(extra) if !extra.is_empty() => format!("{quantity}× {name} ({extra})"),
            _ => format!("{quantity}× {name}"),
        })
        .collect()
}

/// `OrderLine.unit` when a line has none (contract before v5/v6).
const EACH: &str = "each";
/// `events.models.MILLIONTHS`: a line's exact quantity travels in millionths of its unit.
const MILLIONTHS: i64 = 1_000_000;

/// `OrderLine.amount`: `gross`, else the quantity × unit price, where a measured quantity
/// (millionths of its unit) is rounded half to even as Python's `round(Fraction)` does.
fn line_amount(line: &Value) -> i64 {
    let gross = line.get("gross");
    if !gross.is_null() {
        return gross.int();
    }
    let price = line.get("unit_price").int();
    let measured = line.get("quantity_millionths");
    if measured.is_null() {
        return line.get("quantity").int() * price;
    }
    let exact = i128::from(measured.int()) * i128::from(price);
    let millionths = i128::from(MILLIONTHS);
    let (whole, rest) = (exact.div_euclid(millionths), exact.rem_euclid(millionths));
    let up = rest * 2 > millionths || (rest * 2 == millionths && whole % 2 != 0);
    (whole + i128::from(up)) as i64
}

/// The columns an event sets besides status, version and position
/// (`projections.orders._event_changes`).
fn apply_event(row: &mut OrderState, ev: &Value, event_type: &str, at: i64) {
    match event_type {
        "OrderReceived" | "OrderModified" => {
            let before = (event_type == "OrderModified" && row.version != 0).then(|| ticket_lines(row));
            let table = ev.get("table");
            if !table.is_null() || event_type == "OrderReceived" {
                row.table_name = table.s().to_owned();
            }
            let covers = ev.get("covers");
            if !covers.is_null() || event_type == "OrderReceived" {
                row.covers = if covers.is_null() { 0 } else { covers.int().max(0) };
            }
            row.total = ev.get("total").int();
            let lines = ev.get("lines").items();
            row.line_options = lines
                .iter()
                .map(|l| {
                    l.get("options")
                        .items()
                        .iter()
                        .map(|o| o.s())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            row.line_skus = lines.iter().map(|l| l.get("sku").s().to_owned()).collect();
            row.line_names = lines.iter().map(|l| l.get("name").s().to_owned()).collect();
            row.line_quantities = lines.iter().map(|l| l.get("quantity").int()).collect();
            row.line_prices = lines.iter().map(|l| l.get("unit_price").int()).collect();
            row.line_locations = vec![String::new(); lines.len()];
            row.line_amounts = lines.iter().map(|l| line_amount(l)).collect();
            row.line_units = lines
                .iter()
                .map(|l| match l.get("unit") {
                    unit if unit.is_null() || unit.s().is_empty() => EACH.to_owned(),
                    unit => unit.s().to_owned(),
                })
                .collect();
            row.line_millionths = lines
                .iter()
                .map(|l| match l.get("quantity_millionths") {
                    measured if measured.is_null() => l.get("quantity").int() * MILLIONTHS,
                    measured => measured.int(),
                })
                .collect();
            row.line_count = lines.len() as i64;
            // A change of table or covers only is no amendment of the ticket.
            if let Some(before) = before {
                if ticket_lines(row) != before {
                    row.amended_from = before;
                }
            }
            row.item_count = row.line_quantities.iter().map(|q| (*q).max(0)).sum();
            let address = ev.get("address");
            if !address.is_null() {
                row.address = address.get("text").s().to_owned();
                row.city = address.get("city").s().to_owned();
            }
            let mode = ev.get("mode");
            if !mode.is_null() {
                row.mode = mode.s().to_owned();
            }
            let currency = ev.get("currency");
            if !currency.is_null() {
                row.currency = currency.s().to_owned();
            }
            let customer = ev.get("customer");
            if !customer.is_null() {
                let phone = customer.get("phone").s();
                let id = customer.get("id").s();
                let key = customer.get("key").s();
                row.customer_name = customer.get("name").s().to_owned();
                row.customer_phone = phone.to_owned();
                // The pseudonymous key the projector sets (projections/privacy.py), else as
                // before it existed: the phone, else the channel's customer id.
                row.customer_key = if !key.is_empty() {
                    key.to_owned()
                } else if !phone.is_empty() {
                    phone.to_owned()
                } else if !id.is_empty() {
                    format!("{}:{}", ev.get("channel").s(), id)
                } else {
                    String::new()
                };
            }
            let hint = ev.get("location_hint").s();
            if !hint.is_empty() && row.location.is_empty() {
                row.location = hint.to_owned();
            }
            if let Some(placed) = ev.get("placed_at").seconds() {
                if event_type == "OrderReceived" || row.version == 0 {
                    row.placed_at = placed;
                }
            }
        }
        "OrderAccepted" => {
            row.total = ev.get("total").int();
            row.currency = ev.get("currency").s().to_owned();
            row.accepted_at = or_at(row.accepted_at, at);
        }
        "OrderRejected" => {
            let reasons = ev.get("reasons").items();
            row.rejection_codes = reasons
                .iter()
                .map(|r| r.get("code").s().to_owned())
                .collect();
            row.rejection_message = reasons
                .iter()
                .map(|r| r.get("message").s())
                .collect::<Vec<_>>()
                .join("; ");
        }
        "OrderHeld" => {
            row.held = 1;
            row.held_at = Some(at);
            row.risk_score = ev.get("risk_score").int();
        }
        "ReviewApproved" => {
            row.review_outcome = "approved".into();
            row.reviewed_at = Some(at);
        }
        "ReviewRejected" => {
            row.review_outcome = "rejected".into();
            row.reviewed_at = Some(at);
            row.cancelled = 1;
            row.cancelled_by = "reviewer".into();
            row.cancel_reason = "REVIEW_REJECTED".into();
        }
        "OrderCancelled" => {
            row.cancelled = 1;
            row.cancelled_by = ev.get("cancelled_by").s().to_owned();
            row.cancel_reason = ev.get("reason_code").s().to_owned();
        }
        "OrderRouted" => {
            let location = ev.get("location").s();
            let mut by_sku: FxHashMap<&str, &str> = FxHashMap::default();
            for group in ev.get("groups").items() {
                for line in group.get("lines").items() {
                    let at = line.get("location").s();
                    let at = if at.is_empty() {
                        group.get("location").s()
                    } else {
                        at
                    };
                    by_sku.entry(line.get("sku").s()).or_insert(at);
                }
            }
            row.line_locations = row
                .line_skus
                .iter()
                .map(|sku| {
                    by_sku
                        .get(sku.as_str())
                        .copied()
                        .unwrap_or(location)
                        .to_owned()
                })
                .collect();
            row.location = location.to_owned();
        }
        "OrderPrioritised" => {
            row.location = ev.get("location").s().to_owned();
            row.priority_score = ev.get("score").int();
            row.promised_at = ev.get("promised_at").seconds();
        }
        "OrderAcceptedByStore" => {
            row.location = ev.get("location").s().to_owned();
            row.ready_by = ev.get("estimated_ready_at").seconds();
        }
        "OrderPreparing" | "OrderReady" => {
            row.location = ev.get("location").s().to_owned();
        }
        "OrderPickedUp" => {
            row.location = ev.get("location").s().to_owned();
            row.handed_over_at = or_at(row.handed_over_at, at);
        }
        "ShipmentCreated" => row.handed_over_at = or_at(row.handed_over_at, at),
        "OrderDelivered" => row.delivered_at = or_at(row.delivered_at, at),
        "OrderRefunded" => row.refunded += ev.get("amount").int(),
        _ => {}
    }
}

/// What an event adds to `order_activity_per_minute`'s amount: totals, refunds.
pub(crate) fn amount(ev: &Value, event_type: &str) -> i64 {
    match event_type {
        "OrderReceived" | "OrderModified" | "OrderAccepted" => ev.get("total").int(),
        "OrderRefunded" => ev.get("amount").int(),
        _ => 0,
    }
}
