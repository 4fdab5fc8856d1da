//! Each read-model table's rows in RowBinary, column by column in the order
//! projections/schema.py names them: the Python side hands the column lists to `Projection`
//! (one source of truth), and each is checked here when the fold is made — a column this fold
//! cannot write is refused then, naming the table and the column, not found at an INSERT.
//! What each column holds, and its ClickHouse type, is written here.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::decode::Position;
use super::orders::{LineRow, OrderState, StageRow};
use super::rowbinary::{Table, TABLE_COUNT};
use super::stock::{Level, StockChange};
use crate::value::Value;

/// The tables the fold writes, in the order `Projection.fold_batch` makes them.
pub(crate) const TABLES: [&str; TABLE_COUNT] = [
    "order_events",
    "orders",
    "order_lines",
    "fulfilment_stages",
    "order_activity_per_minute",
    "stock",
    "stock_levels",
];

/// An enum of the columns of one table, and the name of each (as in projections/schema.py).
macro_rules! columns {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $column:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub(crate) enum $name {
            $($variant,)*
        }

        impl $name {
            const NAMES: &'static [(&'static str, $name)] = &[$(($column, $name::$variant),)*];

            fn named(name: &str) -> Option<Self> {
                Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
            }

            /// `_topic`, `_partition`, `_offset`: not part of a fold state.
            #[allow(dead_code)] // used for the tables whose rows are fold states
            fn is_position(self) -> bool {
                matches!(self, $name::Topic | $name::Partition | $name::Offset)
            }
        }
    };
}

columns!(
    /// `order_events`: one row per event on the order log.
    EventColumn {
        EventId = "event_id",
        EventType = "event_type",
        OrderId = "order_id",
        Sequence = "sequence",
        OccurredAt = "occurred_at",
        RecordedAt = "recorded_at",
        Channel = "channel",
        Actor = "actor",
        Payload = "payload",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `orders`: an order's current state (the order fold's state).
    OrderColumn {
        OrderId = "order_id",
        Channel = "channel",
        ExternalId = "external_id",
        Mode = "mode",
        Status = "status",
        Currency = "currency",
        Total = "total",
        LineCount = "line_count",
        ItemCount = "item_count",
        CustomerName = "customer_name",
        CustomerPhone = "customer_phone",
        CustomerKey = "customer_key",
        Address = "address",
        City = "city",
        Region = "region",
        Location = "location",
        PriorityScore = "priority_score",
        PromisedAt = "promised_at",
        AcceptedAt = "accepted_at",
        RiskScore = "risk_score",
        Held = "held",
        HeldAt = "held_at",
        ReviewOutcome = "review_outcome",
        ReviewedAt = "reviewed_at",
        Cancelled = "cancelled",
        CancelledBy = "cancelled_by",
        CancelReason = "cancel_reason",
        RejectionCodes = "rejection_codes",
        RejectionMessage = "rejection_message",
        HandedOverAt = "handed_over_at",
        DeliveredAt = "delivered_at",
        Refunded = "refunded",
        IsSale = "is_sale",
        Stage = "stage",
        StageEnteredAt = "stage_entered_at",
        StageSeq = "stage_seq",
        LineSkus = "line_skus",
        LineNames = "line_names",
        LineQuantities = "line_quantities",
        LinePrices = "line_prices",
        LineLocations = "line_locations",
        LineAmounts = "line_amounts",
        LineUnits = "line_units",
        LineMillionths = "line_millionths",
        LineOptions = "line_options",
        TableName = "table_name",
        Covers = "covers",
        ReadyBy = "ready_by",
        AmendedFrom = "amended_from",
        PlacedAt = "placed_at",
        UpdatedAt = "updated_at",
        Version = "version",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `order_lines`: an order line as sales facts.
    LineColumn {
        OrderId = "order_id",
        LineNo = "line_no",
        Sku = "sku",
        ProductName = "product_name",
        Quantity = "quantity",
        UnitPrice = "unit_price",
        Revenue = "revenue",
        Currency = "currency",
        Channel = "channel",
        Location = "location",
        Region = "region",
        Mode = "mode",
        CustomerKey = "customer_key",
        PlacedAt = "placed_at",
        IsSale = "is_sale",
        Version = "version",
        Unit = "unit",
        QuantityMillionths = "quantity_millionths",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `fulfilment_stages`: a stage an order entered (and left).
    StageColumn {
        OrderId = "order_id",
        EnteredSeq = "entered_seq",
        Stage = "stage",
        EnteredAt = "entered_at",
        LeftAt = "left_at",
        Seconds = "seconds",
        NextStage = "next_stage",
        Channel = "channel",
        Mode = "mode",
        Location = "location",
        Version = "version",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `order_activity_per_minute`: a batch's events per minute, channel, type, currency.
    ActivityColumn {
        Minute = "minute",
        Channel = "channel",
        EventType = "event_type",
        Currency = "currency",
        Events = "events",
        Amount = "amount",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `stock`: a ledger event with the levels after it.
    StockColumn {
        Sku = "sku",
        Location = "location",
        Sequence = "sequence",
        EventId = "event_id",
        EventType = "event_type",
        OccurredAt = "occurred_at",
        Quantity = "quantity",
        OnHandChange = "on_hand_change",
        ReservedChange = "reserved_change",
        OnHand = "on_hand",
        Reserved = "reserved",
        SafetyStock = "safety_stock",
        Available = "available",
        OrderId = "order_id",
        Reason = "reason",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

columns!(
    /// `stock_levels`: a sku@location's current levels (the stock fold's state).
    LevelColumn {
        Sku = "sku",
        Location = "location",
        OnHand = "on_hand",
        Reserved = "reserved",
        SafetyStock = "safety_stock",
        Available = "available",
        Sequence = "sequence",
        LastEventType = "last_event_type",
        UpdatedAt = "updated_at",
        Topic = "_topic",
        Partition = "_partition",
        Offset = "_offset",
    }
);

/// The columns of every table the fold writes, in the order its rows have them.
pub(crate) struct Columns {
    pub(crate) order_events: Vec<EventColumn>,
    pub(crate) orders: Vec<OrderColumn>,
    pub(crate) order_lines: Vec<LineColumn>,
    pub(crate) fulfilment_stages: Vec<StageColumn>,
    pub(crate) activity: Vec<ActivityColumn>,
    pub(crate) stock: Vec<StockColumn>,
    pub(crate) stock_levels: Vec<LevelColumn>,
}

impl Columns {
    /// From {table: [column, ...]} for each of `TABLES` (projections/schema.py).
    pub(crate) fn new(mut tables: HashMap<String, Vec<String>>) -> PyResult<Self> {
        if let Some(other) = tables.keys().find(|t| !TABLES.contains(&t.as_str())) {
            return Err(PyValueError::new_err(format!(
                "the native fold does not write a table {other} (it writes {})",
                TABLES.join(", ")
            )));
        }
        let mut take = |table: &str| {
            tables.remove(table).ok_or_else(|| {
                PyValueError::new_err(format!("the native fold needs the columns of {table}"))
            })
        };
        Ok(Columns {
            order_events: plan(TABLES[0], &take(TABLES[0])?, EventColumn::named)?,
            orders: plan(TABLES[1], &take(TABLES[1])?, OrderColumn::named)?,
            order_lines: plan(TABLES[2], &take(TABLES[2])?, LineColumn::named)?,
            fulfilment_stages: plan(TABLES[3], &take(TABLES[3])?, StageColumn::named)?,
            activity: plan(TABLES[4], &take(TABLES[4])?, ActivityColumn::named)?,
            stock: plan(TABLES[5], &take(TABLES[5])?, StockColumn::named)?,
            stock_levels: plan(TABLES[6], &take(TABLES[6])?, LevelColumn::named)?,
        })
    }
}

fn plan<C: Copy + PartialEq>(
    table: &str,
    names: &[String],
    named: impl Fn(&str) -> Option<C>,
) -> PyResult<Vec<C>> {
    let mut columns: Vec<C> = Vec::with_capacity(names.len());
    for name in names {
        let Some(column) = named(name) else {
            return Err(PyValueError::new_err(format!(
                "projections/schema.py gives {table} a column {name:?} the native fold cannot \
                 write: teach native/avro_codec/src/projection/rows.rs what it holds (or project \
                 with OMS_NATIVE_FOLD=0)"
            )));
        };
        if columns.contains(&column) {
            return Err(PyValueError::new_err(format!(
                "{table}: column {name:?} given twice"
            )));
        }
        columns.push(column);
    }
    Ok(columns)
}

// ------------------------------------------------------------------ writing rows

/// An event of the order log as `order_events` keeps it.
pub(crate) struct EventRow<'a> {
    pub(crate) ev: &'a Value,
    pub(crate) event_type: &'a str,
    pub(crate) occurred: i64,
    pub(crate) recorded: i64,
    /// The event as JSON, as pydantic's `model_dump_json` writes it.
    pub(crate) payload: &'a str,
}

pub(crate) fn write_event(
    t: &mut Table,
    columns: &[EventColumn],
    row: &EventRow<'_>,
    topics: &[String; 2],
    at: Position,
) {
    let ev = row.ev;
    for column in columns {
        match column {
            EventColumn::EventId => t.s(ev.get("event_id").s()),
            EventColumn::EventType => t.s(row.event_type),
            EventColumn::OrderId => t.s(ev.get("order_id").s()),
            EventColumn::Sequence => t.u32(ev.get("sequence").int()),
            EventColumn::OccurredAt => t.u32(row.occurred),
            EventColumn::RecordedAt => t.u32(row.recorded),
            EventColumn::Channel => t.s(ev.get("channel").s()),
            EventColumn::Actor => {
                let actor = ev.get("actor");
                let (kind, id) = (actor.get("kind").s(), actor.get("id").s());
                t.varint((kind.len() + 1 + id.len()) as u64);
                t.data.extend_from_slice(kind.as_bytes());
                t.data.push(b':');
                t.data.extend_from_slice(id.as_bytes());
            }
            EventColumn::Payload => t.s(row.payload),
            EventColumn::Topic => t.topic(topics, at),
            EventColumn::Partition => t.partition(at),
            EventColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

pub(crate) fn write_order(
    t: &mut Table,
    columns: &[OrderColumn],
    o: &OrderState,
    topics: &[String; 2],
    at: Position,
) {
    for column in columns {
        match column {
            OrderColumn::OrderId => t.s(&o.order_id),
            OrderColumn::Channel => t.s(&o.channel),
            OrderColumn::ExternalId => t.s(&o.external_id),
            OrderColumn::Mode => t.s(&o.mode),
            OrderColumn::Status => t.s(&o.status),
            OrderColumn::Currency => t.s(&o.currency),
            OrderColumn::Total => t.i64(o.total),
            OrderColumn::LineCount => t.u32(o.line_count),
            OrderColumn::ItemCount => t.u32(o.item_count),
            OrderColumn::CustomerName => t.s(&o.customer_name),
            OrderColumn::CustomerPhone => t.s(&o.customer_phone),
            OrderColumn::CustomerKey => t.s(&o.customer_key),
            OrderColumn::Address => t.s(&o.address),
            OrderColumn::City => t.s(&o.city),
            OrderColumn::Region => t.s(&o.region),
            OrderColumn::Location => t.s(&o.location),
            OrderColumn::PriorityScore => t.i32(o.priority_score),
            OrderColumn::PromisedAt => t.opt_u32(o.promised_at),
            OrderColumn::AcceptedAt => t.opt_u32(o.accepted_at),
            OrderColumn::RiskScore => t.i32(o.risk_score),
            OrderColumn::Held => t.u8(o.held),
            OrderColumn::HeldAt => t.opt_u32(o.held_at),
            OrderColumn::ReviewOutcome => t.s(&o.review_outcome),
            OrderColumn::ReviewedAt => t.opt_u32(o.reviewed_at),
            OrderColumn::Cancelled => t.u8(o.cancelled),
            OrderColumn::CancelledBy => t.s(&o.cancelled_by),
            OrderColumn::CancelReason => t.s(&o.cancel_reason),
            OrderColumn::RejectionCodes => t.strings(&o.rejection_codes),
            OrderColumn::RejectionMessage => t.s(&o.rejection_message),
            OrderColumn::HandedOverAt => t.opt_u32(o.handed_over_at),
            OrderColumn::DeliveredAt => t.opt_u32(o.delivered_at),
            OrderColumn::Refunded => t.i64(o.refunded),
            OrderColumn::IsSale => t.u8(o.is_sale),
            OrderColumn::Stage => t.s(&o.stage),
            OrderColumn::StageEnteredAt => t.u32(o.stage_entered_at),
            OrderColumn::StageSeq => t.u32(o.stage_seq),
            OrderColumn::LineSkus => t.strings(&o.line_skus),
            OrderColumn::LineNames => t.strings(&o.line_names),
            OrderColumn::LineQuantities => t.i32s(&o.line_quantities),
            OrderColumn::LinePrices => t.i64s(&o.line_prices),
            OrderColumn::LineLocations => t.strings(&o.line_locations),
            OrderColumn::LineAmounts => t.i64s(&o.line_amounts),
            OrderColumn::LineUnits => t.strings(&o.line_units),
            OrderColumn::LineMillionths => t.i64s(&o.line_millionths),
            OrderColumn::LineOptions => t.strings(&o.line_options),
            OrderColumn::TableName => t.s(&o.table_name),
            OrderColumn::Covers => t.u32(o.covers),
            OrderColumn::ReadyBy => t.opt_u32(o.ready_by),
            OrderColumn::AmendedFrom => t.strings(&o.amended_from),
            OrderColumn::PlacedAt => t.u32(o.placed_at),
            OrderColumn::UpdatedAt => t.u32(o.updated_at),
            OrderColumn::Version => t.u32(o.version),
            OrderColumn::Topic => t.topic(topics, at),
            OrderColumn::Partition => t.partition(at),
            OrderColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

pub(crate) fn write_line(
    t: &mut Table,
    columns: &[LineColumn],
    l: &LineRow,
    o: &OrderState,
    topics: &[String; 2],
    at: Position,
) {
    for column in columns {
        match column {
            LineColumn::OrderId => t.s(&o.order_id),
            LineColumn::LineNo => t.u16(l.line_no),
            LineColumn::Sku => t.s(&l.sku),
            LineColumn::ProductName => t.s(&l.name),
            LineColumn::Quantity => t.i32(l.quantity),
            LineColumn::UnitPrice => t.i64(l.price),
            LineColumn::Revenue => t.i64(l.amount),
            LineColumn::Currency => t.s(&o.currency),
            LineColumn::Channel => t.s(&o.channel),
            LineColumn::Location => t.s(&l.location),
            LineColumn::Region => t.s(&o.region),
            LineColumn::Mode => t.s(&o.mode),
            LineColumn::CustomerKey => t.s(&o.customer_key),
            LineColumn::PlacedAt => t.u32(o.placed_at),
            LineColumn::IsSale => t.u8(l.is_sale),
            LineColumn::Version => t.u32(o.version),
            LineColumn::Unit => t.s(&l.unit),
            LineColumn::QuantityMillionths => t.i64(l.millionths),
            LineColumn::Topic => t.topic(topics, at),
            LineColumn::Partition => t.partition(at),
            LineColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

pub(crate) fn write_stage(
    t: &mut Table,
    columns: &[StageColumn],
    s: &StageRow,
    o: &OrderState,
    topics: &[String; 2],
    at: Position,
) {
    for column in columns {
        match column {
            StageColumn::OrderId => t.s(&o.order_id),
            StageColumn::EnteredSeq => t.u32(s.entered_seq),
            StageColumn::Stage => t.s(&s.stage),
            StageColumn::EnteredAt => t.u32(s.entered_at),
            StageColumn::LeftAt => t.opt_u32(s.left_at),
            StageColumn::Seconds => t.opt_u32(s.left_at.map(|left| (left - s.entered_at).max(0))),
            StageColumn::NextStage => t.s(&s.next_stage),
            StageColumn::Channel => t.s(&o.channel),
            StageColumn::Mode => t.s(&o.mode),
            StageColumn::Location => t.s(&o.location),
            StageColumn::Version => t.u32(o.version),
            StageColumn::Topic => t.topic(topics, at),
            StageColumn::Partition => t.partition(at),
            StageColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

/// One row of `order_activity_per_minute`: a batch's events of one minute, channel, event
/// type and currency on one partition, the highest offset as its position.
pub(crate) struct ActivityRow {
    pub(crate) minute: i64,
    pub(crate) channel: String,
    pub(crate) event_type: String,
    pub(crate) currency: String,
    pub(crate) events: i64,
    pub(crate) amount: i64,
    pub(crate) at: Position,
}

pub(crate) fn write_activity(
    t: &mut Table,
    columns: &[ActivityColumn],
    a: &ActivityRow,
    topics: &[String; 2],
) {
    for column in columns {
        match column {
            ActivityColumn::Minute => t.u32(a.minute),
            ActivityColumn::Channel => t.s(&a.channel),
            ActivityColumn::EventType => t.s(&a.event_type),
            ActivityColumn::Currency => t.s(&a.currency),
            ActivityColumn::Events => t.u64(a.events),
            ActivityColumn::Amount => t.i64(a.amount),
            ActivityColumn::Topic => t.topic(topics, a.at),
            ActivityColumn::Partition => t.partition(a.at),
            ActivityColumn::Offset => t.offset(a.at),
        }
    }
    t.rows += 1;
}

/// A ledger event as `stock` keeps it, with what it moved.
pub(crate) fn write_stock(
    t: &mut Table,
    columns: &[StockColumn],
    ev: &Value,
    event_type: &str,
    change: &StockChange,
    topics: &[String; 2],
    at: Position,
) {
    let (level, before) = (&change.level, &change.before);
    let after = &level.levels;
    for column in columns {
        match column {
            StockColumn::Sku => t.s(&level.sku),
            StockColumn::Location => t.s(&level.location),
            StockColumn::Sequence => t.u32(level.sequence),
            StockColumn::EventId => t.s(ev.get("event_id").s()),
            StockColumn::EventType => t.s(event_type),
            StockColumn::OccurredAt => t.u32(level.updated_at),
            StockColumn::Quantity => t.i64(super::stock::quantity(ev, event_type)),
            StockColumn::OnHandChange => t.i64(after.on_hand - before.on_hand),
            StockColumn::ReservedChange => t.i64(after.reserved - before.reserved),
            StockColumn::OnHand => t.i64(after.on_hand),
            StockColumn::Reserved => t.i64(after.reserved),
            StockColumn::SafetyStock => t.i64(after.safety_stock),
            StockColumn::Available => t.i64(after.available_to_promise()),
            StockColumn::OrderId => t.s(ev.get("order_id").s()),
            StockColumn::Reason => t.s(super::stock::reason(ev, event_type)),
            StockColumn::Topic => t.topic(topics, at),
            StockColumn::Partition => t.partition(at),
            StockColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

pub(crate) fn write_level(
    t: &mut Table,
    columns: &[LevelColumn],
    level: &Level,
    topics: &[String; 2],
    at: Position,
) {
    let levels = &level.levels;
    for column in columns {
        match column {
            LevelColumn::Sku => t.s(&level.sku),
            LevelColumn::Location => t.s(&level.location),
            LevelColumn::OnHand => t.i64(levels.on_hand),
            LevelColumn::Reserved => t.i64(levels.reserved),
            LevelColumn::SafetyStock => t.i64(levels.safety_stock),
            LevelColumn::Available => t.i64(levels.available_to_promise()),
            LevelColumn::Sequence => t.u32(level.sequence),
            LevelColumn::LastEventType => t.s(&level.last_event_type),
            LevelColumn::UpdatedAt => t.u32(level.updated_at),
            LevelColumn::Topic => t.topic(topics, at),
            LevelColumn::Partition => t.partition(at),
            LevelColumn::Offset => t.offset(at),
        }
    }
    t.rows += 1;
}

// ------------------------------------------------------------------ reading states back

/// An order's state as ClickHouse holds it: a row of the `orders` columns but the position,
/// in their order, times as epoch seconds (projections/native_fold.py ORDER_STATE_SELECT).
pub(crate) fn order_state(
    columns: &[OrderColumn],
    row: &Bound<'_, PyTuple>,
) -> PyResult<OrderState> {
    let mut o = OrderState::default();
    let mut items = row.iter();
    for column in columns.iter().filter(|c| !c.is_position()) {
        let Some(v) = items.next() else {
            return Err(PyValueError::new_err(
                "an orders row with fewer columns than the table",
            ));
        };
        match column {
            OrderColumn::OrderId => o.order_id = v.extract()?,
            OrderColumn::Channel => o.channel = v.extract()?,
            OrderColumn::ExternalId => o.external_id = v.extract()?,
            OrderColumn::Mode => o.mode = v.extract()?,
            OrderColumn::Status => o.status = v.extract()?,
            OrderColumn::Currency => o.currency = v.extract()?,
            OrderColumn::Total => o.total = v.extract()?,
            OrderColumn::LineCount => o.line_count = v.extract()?,
            OrderColumn::ItemCount => o.item_count = v.extract()?,
            OrderColumn::CustomerName => o.customer_name = v.extract()?,
            OrderColumn::CustomerPhone => o.customer_phone = v.extract()?,
            OrderColumn::CustomerKey => o.customer_key = v.extract()?,
            OrderColumn::Address => o.address = v.extract()?,
            OrderColumn::City => o.city = v.extract()?,
            OrderColumn::Region => o.region = v.extract()?,
            OrderColumn::Location => o.location = v.extract()?,
            OrderColumn::PriorityScore => o.priority_score = v.extract()?,
            OrderColumn::PromisedAt => o.promised_at = v.extract()?,
            OrderColumn::AcceptedAt => o.accepted_at = v.extract()?,
            OrderColumn::RiskScore => o.risk_score = v.extract()?,
            OrderColumn::Held => o.held = v.extract::<i64>()? as u8,
            OrderColumn::HeldAt => o.held_at = v.extract()?,
            OrderColumn::ReviewOutcome => o.review_outcome = v.extract()?,
            OrderColumn::ReviewedAt => o.reviewed_at = v.extract()?,
            OrderColumn::Cancelled => o.cancelled = v.extract::<i64>()? as u8,
            OrderColumn::CancelledBy => o.cancelled_by = v.extract()?,
            OrderColumn::CancelReason => o.cancel_reason = v.extract()?,
            OrderColumn::RejectionCodes => o.rejection_codes = v.extract()?,
            OrderColumn::RejectionMessage => o.rejection_message = v.extract()?,
            OrderColumn::HandedOverAt => o.handed_over_at = v.extract()?,
            OrderColumn::DeliveredAt => o.delivered_at = v.extract()?,
            OrderColumn::Refunded => o.refunded = v.extract()?,
            OrderColumn::IsSale => o.is_sale = v.extract::<i64>()? as u8,
            OrderColumn::Stage => o.stage = v.extract()?,
            OrderColumn::StageEnteredAt => o.stage_entered_at = v.extract()?,
            OrderColumn::StageSeq => o.stage_seq = v.extract()?,
            OrderColumn::LineSkus => o.line_skus = v.extract()?,
            OrderColumn::LineNames => o.line_names = v.extract()?,
            OrderColumn::LineQuantities => o.line_quantities = v.extract()?,
            OrderColumn::LinePrices => o.line_prices = v.extract()?,
            OrderColumn::LineLocations => o.line_locations = v.extract()?,
            OrderColumn::LineAmounts => o.line_amounts = v.extract()?,
            OrderColumn::LineUnits => o.line_units = v.extract()?,
            OrderColumn::LineMillionths => o.line_millionths = v.extract()?,
            OrderColumn::LineOptions => o.line_options = v.extract()?,
            OrderColumn::TableName => o.table_name = v.extract()?,
            OrderColumn::Covers => o.covers = v.extract()?,
            OrderColumn::ReadyBy => o.ready_by = v.extract()?,
            OrderColumn::AmendedFrom => o.amended_from = v.extract()?,
            OrderColumn::PlacedAt => o.placed_at = v.extract()?,
            OrderColumn::UpdatedAt => o.updated_at = v.extract()?,
            OrderColumn::Version => o.version = v.extract()?,
            OrderColumn::Topic | OrderColumn::Partition | OrderColumn::Offset => {}
        }
    }
    Ok(o)
}

/// A level as ClickHouse holds it: a row of the `stock_levels` columns but the position, in
/// their order, times as epoch seconds (LEVEL_STATE_SELECT); `available` follows from the rest.
pub(crate) fn level_state(columns: &[LevelColumn], row: &Bound<'_, PyTuple>) -> PyResult<Level> {
    let mut level = Level::default();
    let mut items = row.iter();
    for column in columns.iter().filter(|c| !c.is_position()) {
        let Some(v) = items.next() else {
            return Err(PyValueError::new_err(
                "a stock_levels row with fewer columns than the table",
            ));
        };
        match column {
            LevelColumn::Sku => level.sku = v.extract()?,
            LevelColumn::Location => level.location = v.extract()?,
            LevelColumn::OnHand => level.levels.on_hand = v.extract()?,
            LevelColumn::Reserved => level.levels.reserved = v.extract()?,
            LevelColumn::SafetyStock => level.levels.safety_stock = v.extract()?,
            LevelColumn::Sequence => level.sequence = v.extract()?,
            LevelColumn::LastEventType => level.last_event_type = v.extract()?,
            LevelColumn::UpdatedAt => level.updated_at = v.extract()?,
            LevelColumn::Available
            | LevelColumn::Topic
            | LevelColumn::Partition
            | LevelColumn::Offset => {}
        }
    }
    Ok(level)
}
