//! The projector's fold in native code: Kafka messages of the order log and the stock ledger →
//! each read-model table's rows, already in ClickHouse's RowBinary format.
//!
//! The same fold as `projections/orders.py` and `projections/stock.py` (the reference, which
//! the projector uses when this extension is not built); tests project one log both ways and
//! compare every table. Python keeps the I/O: it hands in batches of messages, the fold states
//! ClickHouse holds for orders this process has not seen, and writes the bytes it gets back.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::value::{self, json, Node, Reader, Value};

const ORDERS: u8 = 0;
const STOCK: u8 = 1;

#[derive(Clone, Copy)]
struct Position {
    topic: u8,
    partition: i32,
    offset: i64,
}

struct EventSchema {
    type_name: String,
    kind: u8,
    root: Node,
}

struct Decoded {
    event: Value,
    schema: Arc<EventSchema>,
    at: Position,
}

// ------------------------------------------------------------------ RowBinary

#[derive(Default)]
struct Table {
    rows: usize,
    data: Vec<u8>,
}

/// Buffers of written batches, kept for the next ones: a batch writes ~100 MB of rows, and
/// fresh memory costs a page fault and a cleared page per 4 KiB (a fifth of the fold's time).
/// One list per table (`TABLES`), as their sizes differ by orders of magnitude.
static SPARE: Mutex<[Vec<Vec<u8>>; 7]> = Mutex::new([const { Vec::new() }; 7]);
const SPARE_KEPT: usize = 3;

impl Table {
    fn for_table(table: usize, capacity: usize) -> Self {
        let spare = SPARE.lock().ok().and_then(|mut spare| spare[table].pop());
        let mut data = spare.unwrap_or_default();
        data.clear();
        data.reserve(capacity);
        Table { rows: 0, data }
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.data.push((n as u8 & 0x7F) | 0x80);
            n >>= 7;
        }
        self.data.push(n as u8);
    }
    fn s(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.data.extend_from_slice(s.as_bytes());
    }
    fn u8(&mut self, n: u8) {
        self.data.push(n);
    }
    fn u16(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u16).to_le_bytes());
    }
    fn u32(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u32).to_le_bytes());
    }
    fn u64(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u64).to_le_bytes());
    }
    fn i32(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as i32).to_le_bytes());
    }
    fn i64(&mut self, n: i64) {
        self.data.extend_from_slice(&n.to_le_bytes());
    }
    fn opt_u32(&mut self, n: Option<i64>) {
        match n {
            None => self.u8(1),
            Some(n) => {
                self.u8(0);
                self.u32(n);
            }
        }
    }
    fn strings(&mut self, items: &[String]) {
        self.varint(items.len() as u64);
        for item in items {
            self.s(item);
        }
    }
    fn position(&mut self, topics: &[String; 2], at: Position) {
        self.s(&topics[at.topic as usize]);
        self.u16(at.partition as i64);
        self.u64(at.offset);
    }
}

// ------------------------------------------------------------------ fold states

/// An `orders` row (projections/schema.py ORDERS_COLUMNS); times as epoch seconds.
#[derive(Clone, Default, PartialEq)]
struct OrderState {
    order_id: String,
    channel: String,
    external_id: String,
    mode: String,
    status: String,
    currency: String,
    total: i64,
    line_count: i64,
    item_count: i64,
    customer_name: String,
    customer_phone: String,
    customer_key: String,
    address: String,
    city: String,
    region: String,
    location: String,
    priority_score: i64,
    promised_at: Option<i64>,
    accepted_at: Option<i64>,
    risk_score: i64,
    held: u8,
    held_at: Option<i64>,
    review_outcome: String,
    reviewed_at: Option<i64>,
    cancelled: u8,
    cancelled_by: String,
    cancel_reason: String,
    rejection_codes: Vec<String>,
    rejection_message: String,
    handed_over_at: Option<i64>,
    delivered_at: Option<i64>,
    refunded: i64,
    is_sale: u8,
    stage: String,
    stage_entered_at: i64,
    stage_seq: i64,
    line_skus: Vec<String>,
    line_names: Vec<String>,
    line_quantities: Vec<i64>,
    line_prices: Vec<i64>,
    line_locations: Vec<String>,
    placed_at: i64,
    updated_at: i64,
    version: i64,
}

const ORDERS_COLUMNS: &[&str] = &[
    "order_id", "channel", "external_id", "mode", "status", "currency", "total", "line_count",
    "item_count", "customer_name", "customer_phone", "customer_key", "address", "city", "region",
    "location", "priority_score", "promised_at", "accepted_at", "risk_score", "held", "held_at",
    "review_outcome", "reviewed_at", "cancelled", "cancelled_by", "cancel_reason",
    "rejection_codes", "rejection_message", "handed_over_at", "delivered_at", "refunded",
    "is_sale", "stage", "stage_entered_at", "stage_seq", "line_skus", "line_names",
    "line_quantities", "line_prices", "line_locations", "placed_at", "updated_at", "version",
    "_topic", "_partition", "_offset",
];

impl OrderState {
    fn write(&self, t: &mut Table, topics: &[String; 2], at: Position) {
        t.s(&self.order_id);
        t.s(&self.channel);
        t.s(&self.external_id);
        t.s(&self.mode);
        t.s(&self.status);
        t.s(&self.currency);
        t.i64(self.total);
        t.u32(self.line_count);
        t.u32(self.item_count);
        t.s(&self.customer_name);
        t.s(&self.customer_phone);
        t.s(&self.customer_key);
        t.s(&self.address);
        t.s(&self.city);
        t.s(&self.region);
        t.s(&self.location);
        t.i32(self.priority_score);
        t.opt_u32(self.promised_at);
        t.opt_u32(self.accepted_at);
        t.i32(self.risk_score);
        t.u8(self.held);
        t.opt_u32(self.held_at);
        t.s(&self.review_outcome);
        t.opt_u32(self.reviewed_at);
        t.u8(self.cancelled);
        t.s(&self.cancelled_by);
        t.s(&self.cancel_reason);
        t.strings(&self.rejection_codes);
        t.s(&self.rejection_message);
        t.opt_u32(self.handed_over_at);
        t.opt_u32(self.delivered_at);
        t.i64(self.refunded);
        t.u8(self.is_sale);
        t.s(&self.stage);
        t.u32(self.stage_entered_at);
        t.u32(self.stage_seq);
        t.strings(&self.line_skus);
        t.strings(&self.line_names);
        t.varint(self.line_quantities.len() as u64);
        for q in &self.line_quantities {
            t.i32(*q);
        }
        t.varint(self.line_prices.len() as u64);
        for p in &self.line_prices {
            t.i64(*p);
        }
        t.strings(&self.line_locations);
        t.u32(self.placed_at);
        t.u32(self.updated_at);
        t.u32(self.version);
        t.position(topics, at);
        t.rows += 1;
    }

    /// A row as ClickHouse returned it (ORDERS_COLUMNS, times as epoch seconds).
    fn from_row(row: &Bound<'_, PyTuple>) -> PyResult<Self> {
        let s = |i: usize| -> PyResult<String> { row.get_item(i)?.extract() };
        let n = |i: usize| -> PyResult<i64> { row.get_item(i)?.extract() };
        let t = |i: usize| -> PyResult<Option<i64>> { row.get_item(i)?.extract() };
        Ok(OrderState {
            order_id: s(0)?,
            channel: s(1)?,
            external_id: s(2)?,
            mode: s(3)?,
            status: s(4)?,
            currency: s(5)?,
            total: n(6)?,
            line_count: n(7)?,
            item_count: n(8)?,
            customer_name: s(9)?,
            customer_phone: s(10)?,
            customer_key: s(11)?,
            address: s(12)?,
            city: s(13)?,
            region: s(14)?,
            location: s(15)?,
            priority_score: n(16)?,
            promised_at: t(17)?,
            accepted_at: t(18)?,
            risk_score: n(19)?,
            held: n(20)? as u8,
            held_at: t(21)?,
            review_outcome: s(22)?,
            reviewed_at: t(23)?,
            cancelled: n(24)? as u8,
            cancelled_by: s(25)?,
            cancel_reason: s(26)?,
            rejection_codes: row.get_item(27)?.extract()?,
            rejection_message: s(28)?,
            handed_over_at: t(29)?,
            delivered_at: t(30)?,
            refunded: n(31)?,
            is_sale: n(32)? as u8,
            stage: s(33)?,
            stage_entered_at: n(34)?,
            stage_seq: n(35)?,
            line_skus: row.get_item(36)?.extract()?,
            line_names: row.get_item(37)?.extract()?,
            line_quantities: row.get_item(38)?.extract()?,
            line_prices: row.get_item(39)?.extract()?,
            line_locations: row.get_item(40)?.extract()?,
            placed_at: n(41)?,
            updated_at: n(42)?,
            version: n(43)?,
        })
    }
}

/// A `stock_levels` row (STOCK_LEVELS_COLUMNS).
#[derive(Clone, Default)]
struct Level {
    sku: String,
    location: String,
    on_hand: i64,
    reserved: i64,
    safety_stock: i64,
    sequence: i64,
    last_event_type: String,
    updated_at: i64,
}

const STOCK_LEVELS_COLUMNS: &[&str] = &[
    "sku", "location", "on_hand", "reserved", "safety_stock", "available", "sequence",
    "last_event_type", "updated_at", "_topic", "_partition", "_offset",
];

impl Level {
    fn write(&self, t: &mut Table, topics: &[String; 2], at: Position) {
        t.s(&self.sku);
        t.s(&self.location);
        t.i64(self.on_hand);
        t.i64(self.reserved);
        t.i64(self.safety_stock);
        t.i64(self.on_hand - self.reserved - self.safety_stock);
        t.u32(self.sequence);
        t.s(&self.last_event_type);
        t.u32(self.updated_at);
        t.position(topics, at);
        t.rows += 1;
    }
}

const ORDER_EVENTS_COLUMNS: &[&str] = &[
    "event_id", "event_type", "order_id", "sequence", "occurred_at", "recorded_at", "channel",
    "actor", "payload", "_topic", "_partition", "_offset",
];
const ORDER_LINES_COLUMNS: &[&str] = &[
    "order_id", "line_no", "sku", "product_name", "quantity", "unit_price", "revenue",
    "currency", "channel", "location", "region", "mode", "customer_key", "placed_at", "is_sale",
    "version", "_topic", "_partition", "_offset",
];
const FULFILMENT_STAGES_COLUMNS: &[&str] = &[
    "order_id", "entered_seq", "stage", "entered_at", "left_at", "seconds", "next_stage",
    "channel", "mode", "location", "version", "_topic", "_partition", "_offset",
];
const ORDER_ACTIVITY_COLUMNS: &[&str] = &[
    "minute", "channel", "event_type", "currency", "events", "amount", "_topic", "_partition",
    "_offset",
];
const STOCK_COLUMNS: &[&str] = &[
    "sku", "location", "sequence", "event_id", "event_type", "occurred_at", "quantity",
    "on_hand_change", "reserved_change", "on_hand", "reserved", "safety_stock", "available",
    "order_id", "reason", "_topic", "_partition", "_offset",
];

/// One `order_lines` row before it is written (the last of a batch per key wins).
struct LineRow {
    line_no: i64,
    sku: String,
    name: String,
    quantity: i64,
    price: i64,
    location: String,
    is_sale: u8,
}

struct StageRow {
    entered_seq: i64,
    stage: String,
    entered_at: i64,
    left_at: Option<i64>,
    next_stage: String,
}

/// What the order's row looked like when a line or stage row was made from it.
struct Made<T> {
    row: T,
    order: Arc<OrderState>,
    at: Position,
}

/// `order_activity_per_minute` of a batch: events and amount per (minute, channel, event
/// type, currency, partition), the highest offset as the row's position.
#[derive(Default)]
struct Activity {
    rows: Vec<ActivityRow>,
    index: FxHashMap<u64, Vec<usize>>,
}

struct ActivityRow {
    minute: i64,
    channel: String,
    event_type: String,
    currency: String,
    events: i64,
    amount: i64,
    at: Position,
}

impl Activity {
    fn add(&mut self, minute: i64, row: &OrderState, event_type: &str, amount: i64, at: Position) {
        let mut hasher = FxHasher::default();
        (minute, &row.channel, event_type, &row.currency, at.topic, at.partition).hash(&mut hasher);
        let candidates = self.index.entry(hasher.finish()).or_default();
        for &i in candidates.iter() {
            let a = &mut self.rows[i];
            if a.minute == minute && a.channel == row.channel && a.event_type == event_type
                && a.currency == row.currency && a.at.topic == at.topic
                && a.at.partition == at.partition
            {
                a.events += 1;
                a.amount += amount;
                a.at.offset = a.at.offset.max(at.offset);
                return;
            }
        }
        candidates.push(self.rows.len());
        self.rows.push(ActivityRow {
            minute,
            channel: row.channel.clone(),
            event_type: event_type.to_owned(),
            currency: row.currency.clone(),
            events: 1,
            amount,
            at,
        });
    }
}

// ------------------------------------------------------------------ the order fold

struct Rules {
    /// status -> event type -> next status (events/lifecycle.py, with the fallbacks of
    /// `projections.orders.next_status`)
    transitions: HashMap<String, HashMap<String, String>>,
    only_target: HashMap<String, String>,
    received: String,
    void: HashSet<String>,
    end_stages: HashSet<String>,
}

impl Rules {
    fn next_status(&self, status: &str, event_type: &str) -> String {
        if let Some(target) = self.transitions.get(status).and_then(|m| m.get(event_type)) {
            return target.clone();
        }
        match self.only_target.get(event_type) {
            Some(target) => target.clone(),
            None => status.to_owned(),
        }
    }
}

fn or_at(current: Option<i64>, at: i64) -> Option<i64> {
    Some(current.unwrap_or(at))
}

/// The columns an event sets besides status, version and position
/// (`projections.orders._event_changes`).
fn apply_event(row: &mut OrderState, ev: &Value, event_type: &str, at: i64) {
    match event_type {
        "OrderReceived" | "OrderModified" => {
            row.total = ev.get("total").int();
            let lines = ev.get("lines").items();
            row.line_skus = lines.iter().map(|l| l.get("sku").s().to_owned()).collect();
            row.line_names = lines.iter().map(|l| l.get("name").s().to_owned()).collect();
            row.line_quantities = lines.iter().map(|l| l.get("quantity").int()).collect();
            row.line_prices = lines.iter().map(|l| l.get("unit_price").int()).collect();
            row.line_locations = vec![String::new(); lines.len()];
            row.line_count = lines.len() as i64;
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
                row.customer_name = customer.get("name").s().to_owned();
                row.customer_phone = phone.to_owned();
                row.customer_key = if !phone.is_empty() {
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
            row.rejection_codes = reasons.iter().map(|r| r.get("code").s().to_owned()).collect();
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
            let mut by_sku: HashMap<&str, &str> = HashMap::new();
            for group in ev.get("groups").items() {
                for line in group.get("lines").items() {
                    let at = line.get("location").s();
                    let at = if at.is_empty() { group.get("location").s() } else { at };
                    by_sku.entry(line.get("sku").s()).or_insert(at);
                }
            }
            row.line_locations = row
                .line_skus
                .iter()
                .map(|sku| by_sku.get(sku.as_str()).copied().unwrap_or(location).to_owned())
                .collect();
            row.location = location.to_owned();
        }
        "OrderPrioritised" => {
            row.location = ev.get("location").s().to_owned();
            row.priority_score = ev.get("score").int();
            row.promised_at = ev.get("promised_at").seconds();
        }
        "OrderAcceptedByStore" | "OrderPreparing" | "OrderReady" => {
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

fn amount(ev: &Value, event_type: &str) -> i64 {
    match event_type {
        "OrderReceived" | "OrderModified" | "OrderAccepted" => ev.get("total").int(),
        "OrderRefunded" => ev.get("amount").int(),
        _ => 0,
    }
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
}

struct OrderChange {
    row: OrderState,
    lines: Vec<LineRow>,
    stages: Vec<StageRow>,
}

/// `projections.orders.fold`: None when the event was applied before.
fn fold_order(
    rules: &Rules,
    state: Option<&OrderState>,
    ev: &Value,
    event_type: &str,
    at: i64,
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
    let status = if state.is_some() {
        rules.next_status(&base_status, event_type)
    } else if event_type == "OrderReceived" || event_type == "OrderModified" {
        rules.received.clone()
    } else {
        let status = rules.next_status("", event_type);
        if status.is_empty() { rules.received.clone() } else { status }
    };
    row.status = status;
    row.region = if row.city.is_empty() { row.location.clone() } else { row.city.clone() };
    if rules.void.contains(&row.status) {
        row.is_sale = 0;
    } else if !rules.void.contains(&base_status) {
        row.is_sale = row.accepted_at.is_some() as u8;
    }
    row.version = sequence;
    row.updated_at = at;
    // Stages: close the one the order leaves, open the one it enters.
    let mut stages = Vec::new();
    if state.map_or(true, |old| old.status != row.status) {
        if let Some(old) = state {
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
    }
    // Lines, when anything they show changed; a line a revision removed gets quantity 0.
    let mut lines = Vec::new();
    if state.map_or(true, |old| !same_line_facts(old, &row)) {
        let count = row.line_skus.len();
        let before = state.map_or(0, |old| old.line_skus.len());
        for n in 0..count.max(before) {
            lines.push(if n < count {
                let location = row.line_locations.get(n).map_or("", String::as_str);
                LineRow {
                    line_no: n as i64,
                    sku: row.line_skus[n].clone(),
                    name: row.line_names.get(n).cloned().unwrap_or_default(),
                    quantity: row.line_quantities.get(n).copied().unwrap_or(0),
                    price: row.line_prices.get(n).copied().unwrap_or(0),
                    location: if location.is_empty() { row.location.clone() } else { location.to_owned() },
                    is_sale: row.is_sale,
                }
            } else {
                let old = state.unwrap();
                LineRow {
                    line_no: n as i64,
                    sku: old.line_skus[n].clone(),
                    name: old.line_names.get(n).cloned().unwrap_or_default(),
                    quantity: 0,
                    price: 0,
                    location: row.location.clone(),
                    is_sale: 0,
                }
            });
        }
    }
    Some(OrderChange { row, lines, stages })
}

// ------------------------------------------------------------------ the stock fold

/// (the event's own quantity, change of on_hand, change of reserved, new safety stock):
/// `projections.stock.movement`.
fn movement(ev: &Value, event_type: &str, on_hand: i64) -> (i64, i64, i64, Option<i64>) {
    let q = ev.get("quantity").int();
    match event_type {
        "StockReceived" | "ExpiryBatchAdded" => (q, q, 0, None),
        "StockAdjusted" => {
            let d = ev.get("delta").int();
            (d, d, 0, None)
        }
        "StockCounted" => {
            let c = ev.get("counted").int();
            (c, c - on_hand, 0, None)
        }
        "StockReserved" => (q, 0, q, None),
        "StockReleased" => (q, 0, -q, None),
        "StockCommitted" => (q, -q, -q, None),
        "SafetyStockSet" => (q, 0, 0, Some(q)),
        "ExpiryBatchExpired" => (q, -q, 0, None),
        "StockReservationRefused" => (ev.get("requested").int(), 0, 0, None),
        "LowStockAlerted" => (ev.get("reorder_quantity").int(), 0, 0, None),
        _ => (0, 0, 0, None),
    }
}

fn stock_reason<'a>(ev: &'a Value, event_type: &str) -> &'a str {
    match event_type {
        "StockReceived" => ev.get("reference").s(),
        "ExpiryBatchAdded" | "ExpiryBatchExpired" => ev.get("batch_id").s(),
        _ => ev.get("reason").s(),
    }
}

// ------------------------------------------------------------------ the batch

struct Entry<T> {
    state: T,
    used: u64,
}

fn marks_of(
    marks: &Bound<'_, PyDict>,
    table: &str,
    topics: &[String; 2],
) -> PyResult<Option<HashMap<(u8, i32), i64>>> {
    let Some(per_table) = marks.get_item(table)? else {
        return Ok(None);
    };
    let mut out = HashMap::new();
    for (key, mark) in per_table.downcast::<PyDict>()?.iter() {
        let (topic, partition): (String, i32) = key.extract()?;
        if let Some(index) = topics.iter().position(|t| *t == topic) {
            out.insert((index as u8, partition), mark.extract::<i64>()?);
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// Whether a table still needs the rows of the message at `at` (no crash left them behind).
fn needs(marks: &Option<HashMap<(u8, i32), i64>>, at: Position) -> bool {
    match marks {
        None => true,
        Some(marks) => marks.get(&(at.topic, at.partition)).map_or(true, |mark| at.offset > *mark),
    }
}

/// Forgotten keys remembered (as 8-byte hashes, ~160 MB at most).
const FORGOTTEN_KEPT: usize = 10_000_000;

fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = FxHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The projector's fold states and decoder (one per projector).
#[pyclass(module = "orderstream_avro")]
pub struct Projection {
    topics: [String; 2],
    schemas: Arc<HashMap<u32, Arc<EventSchema>>>,
    rules: Rules,
    /// `fallback(raw, topic)`: current-schema bytes for a message this decoder does not take
    /// (an older schema version, a corrupt body), or the CodecError's reason as a str.
    fallback: PyObject,
    orders: FxHashMap<Arc<str>, Entry<Arc<OrderState>>>,
    levels: FxHashMap<(String, String), Entry<Level>>,
    capacity: usize,
    batch: u64,
    /// Whether every state there is passed through here (ClickHouse held none at start): a
    /// key that is neither kept nor forgotten is then new, and needs no query.
    complete: bool,
    /// Hashes of the keys whose states were let go (a hash shared by chance costs a query).
    forgotten: FxHashSet<u64>,
}

/// Decodes batches for a `Projection` (its `decoder()`), on another thread than the fold's.
#[pyclass(module = "orderstream_avro", frozen)]
pub struct Decoder {
    topics: [String; 2],
    schemas: Arc<HashMap<u32, Arc<EventSchema>>>,
    fallback: PyObject,
}

#[pymethods]
impl Decoder {
    /// Decode a batch of Kafka messages: (the batch for `Projection.fold`, rejected messages
    /// as (topic, partition, offset, raw, reason), the ledger as (topic, partition, last
    /// offset, count), order events, stock events).
    #[allow(clippy::type_complexity)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyList>,
    ) -> PyResult<(
        Batch,
        Vec<(String, i32, i64, Bound<'py, PyAny>, String)>,
        Vec<(String, i32, i64, i64)>,
        usize,
        usize,
    )> {
        let mut decoded = Vec::with_capacity(messages.len());
        let mut rejected = Vec::new();
        let mut ledger: Vec<((String, i32), (i64, i64))> = Vec::new();
        let mut ledger_index: HashMap<(u8, i32), usize> = HashMap::new();
        let (mut order_events, mut stock_events) = (0, 0);
        for message in messages.iter() {
            let topic_obj = message.call_method0("topic")?;
            let topic = topic_obj.downcast::<PyString>()?.to_str()?;
            let partition: i32 = message.call_method0("partition")?.extract()?;
            let offset: i64 = message.call_method0("offset")?.extract()?;
            let raw = message.call_method0("value")?;
            let index = if topic == self.topics[0] { ORDERS } else if topic == self.topics[1] { STOCK } else { 2 };
            let key = (index, partition);
            match ledger_index.get(&key) {
                Some(&i) => {
                    let entry = &mut ledger[i].1;
                    entry.0 = entry.0.max(offset);
                    entry.1 += 1;
                }
                None => {
                    ledger_index.insert(key, ledger.len());
                    ledger.push(((topic.to_owned(), partition), (offset, 1)));
                }
            }
            let at = Position { topic: index, partition, offset };
            let bytes: &[u8] = if raw.is_none() { &[] } else { raw.downcast::<PyBytes>()?.as_bytes() };
            match self.decode_one(py, bytes, topic, index)? {
                Ok((event, schema)) => {
                    if schema.kind == ORDERS {
                        order_events += 1;
                    } else {
                        stock_events += 1;
                    }
                    decoded.push(Decoded { event, schema, at });
                }
                Err(reason) => {
                    let raw = if raw.is_none() { PyBytes::new(py, b"").into_any() } else { raw };
                    rejected.push((topic.to_owned(), partition, offset, raw, reason));
                }
            }
        }
        let ledger = ledger.into_iter().map(|((t, p), (last, n))| (t, p, last, n)).collect();
        Ok((Batch { decoded }, rejected, ledger, order_events, stock_events))
    }

}

impl Decoder {
    /// One message: (the event, its schema) or the reason it is rejected.
    fn decode_one(
        &self,
        py: Python<'_>,
        raw: &[u8],
        topic: &str,
        index: u8,
    ) -> PyResult<Result<(Value, Arc<EventSchema>), String>> {
        if let Some(found) = self.decode_current(raw, topic, index) {
            return Ok(found);
        }
        // Not a current schema, or not decodable here: the Python codec says what it is.
        let answer = self.fallback.call1(py, (PyBytes::new(py, raw), topic))?;
        let answer = answer.bind(py);
        if let Ok(reason) = answer.downcast::<PyString>() {
            return Ok(Err(reason.to_str()?.to_owned()));
        }
        let current = answer.downcast::<PyBytes>()?.as_bytes();
        Ok(match self.decode_current(current, topic, index) {
            Some(found) => found,
            None => Err("the native projector could not decode the current schema's bytes".into()),
        })
    }

    /// None unless the message is in a current schema this decoder knows and decodes whole.
    fn decode_current(
        &self,
        raw: &[u8],
        topic: &str,
        index: u8,
    ) -> Option<Result<(Value, Arc<EventSchema>), String>> {
        if raw.len() < 5 || raw[0] != 0 {
            return None;
        }
        let schema_id = u32::from_be_bytes(raw[1..5].try_into().unwrap());
        let schema = self.schemas.get(&schema_id)?;
        let mut reader = Reader { data: raw, pos: 5 };
        let event = value::decode(&schema.root, &mut reader).ok()?;
        if reader.pos != raw.len() {
            return None;
        }
        if schema.kind != index {
            return Some(Err(format!("{} does not belong on {}", schema.type_name, topic)));
        }
        Some(Ok((event, schema.clone())))
    }

}

/// A decoded batch, waiting for `Projection.fold`.
#[pyclass(module = "orderstream_avro")]
pub struct Batch {
    decoded: Vec<Decoded>,
}

#[pymethods]
impl Batch {
    /// Append another decoded part of the same batch (taking its events).
    fn extend(&mut self, other: &mut Batch) {
        self.decoded.append(&mut other.decoded);
    }

    fn __len__(&self) -> usize {
        self.decoded.len()
    }
}

#[pymethods]
impl Projection {
    #[new]
    #[pyo3(signature = (*, orders_topic, stock_topic, schemas, transitions, only_target, received, void, end_stages, capacity, fallback))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        orders_topic: String,
        stock_topic: String,
        schemas: &Bound<'_, PyList>,
        transitions: HashMap<String, HashMap<String, String>>,
        only_target: HashMap<String, String>,
        received: String,
        void: HashSet<String>,
        end_stages: HashSet<String>,
        capacity: usize,
        fallback: PyObject,
    ) -> PyResult<Self> {
        let mut by_id = HashMap::new();
        for entry in schemas.iter() {
            let (schema_id, type_name, kind, plan): (u32, String, String, Bound<'_, PyAny>) =
                entry.extract()?;
            let kind = match kind.as_str() {
                "order" => ORDERS,
                "stock" => STOCK,
                other => return Err(PyValueError::new_err(format!("unknown event kind {other}"))),
            };
            by_id.insert(schema_id, Arc::new(EventSchema { type_name, kind, root: value::build(&plan)? }));
        }
        Ok(Projection {
            topics: [orders_topic, stock_topic],
            schemas: Arc::new(by_id),
            rules: Rules { transitions, only_target, received, void, end_stages },
            fallback,
            orders: FxHashMap::default(),
            levels: FxHashMap::default(),
            capacity,
            batch: 0,
            complete: false,
            forgotten: FxHashSet::default(),
        })
    }

    /// The columns of each table's RowBinary, in order.
    #[staticmethod]
    fn columns() -> HashMap<&'static str, Vec<&'static str>> {
        HashMap::from([
            ("order_events", ORDER_EVENTS_COLUMNS.to_vec()),
            ("orders", ORDERS_COLUMNS.to_vec()),
            ("order_lines", ORDER_LINES_COLUMNS.to_vec()),
            ("fulfilment_stages", FULFILMENT_STAGES_COLUMNS.to_vec()),
            ("order_activity_per_minute", ORDER_ACTIVITY_COLUMNS.to_vec()),
            ("stock", STOCK_COLUMNS.to_vec()),
            ("stock_levels", STOCK_LEVELS_COLUMNS.to_vec()),
        ])
    }

    /// Whether ClickHouse held no fold state when this fold began (see `complete`).
    #[setter]
    fn set_complete(&mut self, complete: bool) {
        self.complete = complete;
    }

    /// Forget every fold state (the projector starts again from what ClickHouse holds).
    fn reset(&mut self) {
        self.orders.clear();
        self.levels.clear();
        self.complete = false;
        self.forgotten.clear();
    }

    /// A decoder for this projection's topics and schemas.
    fn decoder(&self, py: Python<'_>) -> Decoder {
        Decoder {
            topics: self.topics.clone(),
            schemas: self.schemas.clone(),
            fallback: self.fallback.clone_ref(py),
        }
    }

    /// The order ids and (sku, location) keys the batch names whose state ClickHouse may hold
    /// and this fold does not (`load_orders`, `load_levels` take them).
    fn missing(&self, batch: &Batch) -> (Vec<String>, Vec<(String, String)>) {
        let mut missing_orders = Vec::new();
        let mut missing_levels = Vec::new();
        let mut seen_orders = FxHashSet::default();
        let mut seen_levels = FxHashSet::default();
        for d in &batch.decoded {
            if d.schema.kind == ORDERS {
                let id = d.event.get("order_id").s();
                if !self.orders.contains_key(id) && self.may_exist(key_hash(&id)) && seen_orders.insert(id) {
                    missing_orders.push(id.to_owned());
                }
            } else {
                let key = (d.event.get("sku").s(), d.event.get("location").s());
                if !self.levels.contains_key(&(key.0.to_owned(), key.1.to_owned()))
                    && self.may_exist(key_hash(&key))
                    && seen_levels.insert(key)
                {
                    missing_levels.push((key.0.to_owned(), key.1.to_owned()));
                }
            }
        }
        (missing_orders, missing_levels)
    }

    /// Order states as ClickHouse holds them: rows of ORDERS_COLUMNS without the position,
    /// times as epoch seconds.
    fn load_orders(&mut self, rows: &Bound<'_, PyList>) -> PyResult<()> {
        for row in rows.iter() {
            let state = OrderState::from_row(row.downcast::<PyTuple>()?)?;
            let id: Arc<str> = Arc::from(state.order_id.as_str());
            self.orders.insert(id, Entry { state: Arc::new(state), used: self.batch });
        }
        Ok(())
    }

    /// Stock levels as ClickHouse holds them: (sku, location, on_hand, reserved, safety_stock,
    /// sequence, last_event_type, updated_at as epoch seconds).
    fn load_levels(&mut self, rows: Vec<(String, String, i64, i64, i64, i64, String, i64)>) {
        for (sku, location, on_hand, reserved, safety_stock, sequence, last_event_type, updated_at) in rows {
            let level = Level { sku: sku.clone(), location: location.clone(), on_hand, reserved, safety_stock, sequence, last_event_type, updated_at };
            self.levels.insert((sku, location), Entry { state: level, used: self.batch });
        }
    }

    /// Fold the decoded batch: each table's (row count, RowBinary bytes) and (duplicates,
    /// orders written). `marks` holds, per table, the highest offset per (topic, partition)
    /// it has beyond the ledger (rows a crash left behind, not to be written again). Runs
    /// without the GIL: the projector's Kafka reader and ClickHouse writer go on meanwhile.
    #[allow(clippy::type_complexity)]
    fn fold<'py>(
        &mut self,
        py: Python<'py>,
        batch: &mut Batch,
        marks: &Bound<'py, PyDict>,
    ) -> PyResult<(HashMap<&'static str, (usize, Bound<'py, RowBinary>)>, usize, usize)> {
        let mut by_table = Vec::new();
        for table in TABLES {
            by_table.push(marks_of(marks, table, &self.topics)?);
        }
        let decoded = std::mem::take(&mut batch.decoded);
        let (tables, duplicates, orders_written) =
            py.allow_threads(|| self.fold_batch(decoded, by_table));
        let mut out = HashMap::new();
        for (index, (name, table)) in TABLES.iter().zip(tables).enumerate() {
            let rows = RowBinary { data: table.data, table: index };
            out.insert(*name, (table.rows, Bound::new(py, rows)?));
        }
        Ok((out, duplicates, orders_written))
    }
}

/// A table's rows in RowBinary, handed to Python without a copy (the buffer protocol: bytes-
/// like for sockets and files).
#[pyclass(module = "orderstream_avro", frozen)]
pub struct RowBinary {
    data: Vec<u8>,
    table: usize,
}

impl Drop for RowBinary {
    fn drop(&mut self) {
        if let Ok(mut spare) = SPARE.lock() {
            if spare[self.table].len() < SPARE_KEPT {
                spare[self.table].push(std::mem::take(&mut self.data));
            }
        }
    }
}

#[pymethods]
impl RowBinary {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        let status = pyo3::ffi::PyBuffer_FillInfo(
            view,
            slf.as_ptr(),
            data.as_ptr() as *mut std::os::raw::c_void,
            data.len() as pyo3::ffi::Py_ssize_t,
            1,
            flags,
        );
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// The tables the fold writes, in the order `fold_batch` returns them.
const TABLES: [&str; 7] = [
    "order_events",
    "orders",
    "order_lines",
    "fulfilment_stages",
    "order_activity_per_minute",
    "stock",
    "stock_levels",
];

type Marks = Option<HashMap<(u8, i32), i64>>;

impl Projection {
    fn fold_batch(&mut self, decoded: Vec<Decoded>, marks: Vec<Marks>) -> (Vec<Table>, usize, usize) {
        self.batch += 1;
        let topics = self.topics.clone();
        let mut marks = marks.into_iter();
        let mut next = || marks.next().flatten();
        let (m_events, m_orders, m_lines, m_stages, m_activity, m_stock, m_levels) =
            (next(), next(), next(), next(), next(), next(), next());
        let order_count = decoded.iter().filter(|d| d.schema.kind == ORDERS).count();
        let mut events = Table::for_table(0, order_count * 900);
        let mut history = Table::for_table(5, 0);
        let mut lines: FxHashMap<(Arc<str>, i64), Made<LineRow>> = FxHashMap::default();
        let mut line_order: Vec<(Arc<str>, i64)> = Vec::new();
        let mut stages: FxHashMap<(Arc<str>, i64), Made<StageRow>> = FxHashMap::default();
        let mut stage_order: Vec<(Arc<str>, i64)> = Vec::new();
        let mut activity = Activity::default();
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut changed_at: FxHashMap<Arc<str>, Position> = FxHashMap::default();
        let mut changed_levels: Vec<(String, String)> = Vec::new();
        let mut levels_at: FxHashMap<(String, String), Position> = FxHashMap::default();
        let mut duplicates = 0;
        let mut payload = String::with_capacity(1024);
        let mut replaced: Vec<Arc<OrderState>> = Vec::with_capacity(decoded.len());
        let batch = self.batch;
        for d in &decoded {
            let ev = &d.event;
            let event_type = d.schema.type_name.as_str();
            let at = d.at;
            let occurred = ev.get("occurred_at").seconds().unwrap_or(0);
            if d.schema.kind == STOCK {
                let key = (ev.get("sku").s().to_owned(), ev.get("location").s().to_owned());
                let state = self.levels.get(&key).map(|e| &e.state);
                let sequence = ev.get("sequence").int();
                if state.is_some_and(|s| sequence <= s.sequence) {
                    duplicates += 1;
                    continue;
                }
                let (mut on_hand, mut reserved, mut safety) = state.map_or((0, 0, 0), |s| (s.on_hand, s.reserved, s.safety_stock));
                let (quantity, on_hand_change, reserved_change, new_safety) = movement(ev, event_type, on_hand);
                on_hand += on_hand_change;
                reserved += reserved_change;
                safety = new_safety.unwrap_or(safety);
                let available = on_hand - reserved - safety;
                if needs(&m_stock, at) {
                    let t = &mut history;
                    t.s(&key.0);
                    t.s(&key.1);
                    t.u32(sequence);
                    t.s(ev.get("event_id").s());
                    t.s(event_type);
                    t.u32(occurred);
                    t.i64(quantity);
                    t.i64(on_hand_change);
                    t.i64(reserved_change);
                    t.i64(on_hand);
                    t.i64(reserved);
                    t.i64(safety);
                    t.i64(available);
                    t.s(ev.get("order_id").s());
                    t.s(stock_reason(ev, event_type));
                    t.position(&topics, at);
                    t.rows += 1;
                }
                let level = Level {
                    sku: key.0.clone(), location: key.1.clone(), on_hand, reserved, safety_stock: safety,
                    sequence, last_event_type: event_type.to_owned(), updated_at: occurred,
                };
                if levels_at.insert(key.clone(), at).is_none() {
                    changed_levels.push(key.clone());
                }
                self.levels.insert(key, Entry { state: level, used: batch });
                continue;
            }
            let order_id = ev.get("order_id").s();
            let recorded = ev.get("recorded_at").seconds().unwrap_or(0);
            if needs(&m_events, at) {
                payload.clear();
                json(ev, &mut payload);
                let actor = ev.get("actor");
                let t = &mut events;
                t.s(ev.get("event_id").s());
                t.s(event_type);
                t.s(order_id);
                t.u32(ev.get("sequence").int());
                t.u32(occurred);
                t.u32(recorded);
                t.s(ev.get("channel").s());
                let kind = actor.get("kind").s();
                let id = actor.get("id").s();
                t.varint((kind.len() + 1 + id.len()) as u64);
                t.data.extend_from_slice(kind.as_bytes());
                t.data.push(b':');
                t.data.extend_from_slice(id.as_bytes());
                t.s(&payload);
                t.position(&topics, at);
                t.rows += 1;
            }
            let state = self.orders.get(order_id).map(|e| e.state.as_ref());
            // The order's times are when OrderStream recorded each event, not when the channel
            // says it occurred (projections/orders.py `fold`).
            let Some(change) = fold_order(&self.rules, state, ev, event_type, recorded) else {
                duplicates += 1;
                continue;
            };
            let row = Arc::new(change.row);
            let id: Arc<str> = match self.orders.get_key_value(order_id) {
                Some((key, _)) => key.clone(),
                None => Arc::from(order_id),
            };
            if needs(&m_lines, at) {
                for line in change.lines {
                    let key = (id.clone(), line.line_no);
                    let made = Made { row: line, order: row.clone(), at };
                    if lines.insert(key.clone(), made).is_none() {
                        line_order.push(key);
                    }
                }
            }
            if needs(&m_stages, at) {
                for stage in change.stages {
                    let key = (id.clone(), stage.entered_seq);
                    let made = Made { row: stage, order: row.clone(), at };
                    if stages.insert(key.clone(), made).is_none() {
                        stage_order.push(key);
                    }
                }
            }
            if needs(&m_activity, at) {
                activity.add(recorded.div_euclid(60) * 60, &row, event_type, amount(ev, event_type), at);
            }
            if changed_at.insert(id.clone(), at).is_none() {
                changed.push(id.clone());
            }
            if let Some(old) = self.orders.insert(id, Entry { state: row, used: batch }) {
                replaced.push(old.state);
            }
        }
        // The tables, in the projector's write order.
        let mut orders = Table::for_table(1, 0);
        for id in &changed {
            let at = changed_at[id];
            if needs(&m_orders, at) {
                self.orders[id.as_ref()].state.write(&mut orders, &topics, at);
            }
        }
        let mut line_table = Table::for_table(2, 0);
        for key in &line_order {
            let Made { row: l, order: o, at } = &lines[key];
            let t = &mut line_table;
            t.s(&o.order_id);
            t.u16(l.line_no);
            t.s(&l.sku);
            t.s(&l.name);
            t.i32(l.quantity);
            t.i64(l.price);
            t.i64(l.quantity * l.price);
            t.s(&o.currency);
            t.s(&o.channel);
            t.s(&l.location);
            t.s(&o.region);
            t.s(&o.mode);
            t.s(&o.customer_key);
            t.u32(o.placed_at);
            t.u8(l.is_sale);
            t.u32(o.version);
            t.position(&topics, *at);
            t.rows += 1;
        }
        let mut stage_table = Table::for_table(3, 0);
        for key in &stage_order {
            let Made { row: s, order: o, at } = &stages[key];
            let t = &mut stage_table;
            t.s(&o.order_id);
            t.u32(s.entered_seq);
            t.s(&s.stage);
            t.u32(s.entered_at);
            t.opt_u32(s.left_at);
            t.opt_u32(s.left_at.map(|left| (left - s.entered_at).max(0)));
            t.s(&s.next_stage);
            t.s(&o.channel);
            t.s(&o.mode);
            t.s(&o.location);
            t.u32(o.version);
            t.position(&topics, *at);
            t.rows += 1;
        }
        let mut activity_table = Table::for_table(4, 0);
        for a in &activity.rows {
            let t = &mut activity_table;
            t.u32(a.minute);
            t.s(&a.channel);
            t.s(&a.event_type);
            t.s(&a.currency);
            t.u64(a.events);
            t.i64(a.amount);
            t.position(&topics, a.at);
            t.rows += 1;
        }
        let mut level_table = Table::for_table(6, 0);
        for key in &changed_levels {
            let at = levels_at[key];
            if needs(&m_levels, at) {
                self.levels[key].state.write(&mut level_table, &topics, at);
            }
        }
        let orders_written = changed.len();
        self.forget_old();
        // Freeing a batch's events and the states it replaced takes a tenth of the fold's time;
        // another thread does it, while this one goes on to write and fold the next batch.
        std::thread::spawn(move || drop((decoded, replaced, lines, stages)));
        let tables = vec![events, orders, line_table, stage_table, activity_table, history, level_table];
        (tables, duplicates, orders_written)
    }
}

impl Projection {
    /// Keep the fold states of the most recent batches within `capacity` (states not kept
    /// are read from ClickHouse again when named).
    fn forget_old(&mut self) {
        if self.orders.len() > self.capacity {
            let cut = Self::cutoff(self.orders.values().map(|e| e.used), self.capacity);
            let forgotten = &mut self.forgotten;
            self.orders.retain(|key, e| {
                let keep = e.used >= cut;
                if !keep {
                    forgotten.insert(key_hash(&key.as_ref()));
                }
                keep
            });
        }
        if self.levels.len() > self.capacity {
            let cut = Self::cutoff(self.levels.values().map(|e| e.used), self.capacity);
            let forgotten = &mut self.forgotten;
            self.levels.retain(|key, e| {
                let keep = e.used >= cut;
                if !keep {
                    forgotten.insert(key_hash(&(key.0.as_str(), key.1.as_str())));
                }
                keep
            });
        }
        if self.forgotten.len() > FORGOTTEN_KEPT {
            // Past this, every key not kept is asked for (as after a restart).
            self.complete = false;
            self.forgotten.clear();
        }
    }

    /// Whether ClickHouse may hold a state for the key with this hash.
    fn may_exist(&self, hash: u64) -> bool {
        !self.complete || self.forgotten.contains(&hash)
    }

    /// The oldest batch number to keep so that at most ~90 % of `capacity` states stay (the
    /// latest batch's states always stay).
    fn cutoff(used: impl Iterator<Item = u64>, capacity: usize) -> u64 {
        let mut used: Vec<u64> = used.collect();
        if used.len() <= capacity || used.is_empty() {
            return 0;
        }
        used.sort_unstable_by(|a, b| b.cmp(a));
        let keep = capacity * 9 / 10;
        (used[keep.min(used.len() - 1)] + 1).min(used[0])
    }
}
