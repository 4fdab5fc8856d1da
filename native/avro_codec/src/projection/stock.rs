//! The stock fold: `projections.stock.fold` in Rust. The levels move as
//! `events.stock_levels.next_levels` says (`next_levels` here, held to it by the parity tests
//! in tests/projections/test_native_fold.py).

use crate::value::Value;

/// What one sku@location's ledger holds.
#[derive(Clone, Copy, Default)]
pub(crate) struct Levels {
    pub(crate) on_hand: i64,
    pub(crate) reserved: i64,
    pub(crate) safety_stock: i64,
}

impl Levels {
    pub(crate) fn available_to_promise(&self) -> i64 {
        self.on_hand - self.reserved - self.safety_stock
    }
}

/// A `stock_levels` row (STOCK_LEVELS_COLUMNS but the position; `available` follows from the
/// levels); times as epoch seconds.
#[derive(Clone, Default)]
pub(crate) struct Level {
    pub(crate) sku: String,
    pub(crate) location: String,
    pub(crate) levels: Levels,
    pub(crate) sequence: i64,
    pub(crate) last_event_type: String,
    pub(crate) updated_at: i64,
}

/// One ledger event applied: the level after it, and the levels before (its `stock` row
/// shows what it moved).
pub(crate) struct StockChange {
    pub(crate) level: Level,
    pub(crate) before: Levels,
}

/// `projections.stock.fold`: one ledger event applied to a sku@location's level (None: it has
/// none yet), which occurred at `at`; None when its sequence was applied already.
pub(crate) fn fold_level(
    state: Option<&Level>,
    ev: &Value,
    event_type: &str,
    at: i64,
) -> Option<StockChange> {
    let sequence = ev.get("sequence").int();
    if state.is_some_and(|s| sequence <= s.sequence) {
        return None;
    }
    let before = state.map_or_else(Levels::default, |s| s.levels);
    let level = Level {
        sku: ev.get("sku").s().to_owned(),
        location: ev.get("location").s().to_owned(),
        levels: next_levels(before, ev, event_type),
        sequence,
        last_event_type: event_type.to_owned(),
        updated_at: at,
    };
    Some(StockChange { level, before })
}

/// `events.stock_levels.next_levels`: the levels after a ledger event; any other event moves
/// nothing.
pub(crate) fn next_levels(levels: Levels, ev: &Value, event_type: &str) -> Levels {
    let Levels {
        on_hand,
        reserved,
        safety_stock,
    } = levels;
    let q = || ev.get("quantity").int();
    let (on_hand, reserved, safety_stock) = match event_type {
        "StockReceived" | "ExpiryBatchAdded" => (on_hand + q(), reserved, safety_stock),
        "StockAdjusted" => (on_hand + ev.get("delta").int(), reserved, safety_stock),
        "StockCounted" => (ev.get("counted").int(), reserved, safety_stock),
        "StockReserved" => (on_hand, reserved + q(), safety_stock),
        "StockReleased" => (on_hand, reserved - q(), safety_stock),
        "StockCommitted" => (on_hand - q(), reserved - q(), safety_stock),
        "SafetyStockSet" => (on_hand, reserved, q()),
        "ExpiryBatchExpired" => (on_hand - q(), reserved, safety_stock),
        _ => (on_hand, reserved, safety_stock),
    };
    Levels {
        on_hand,
        reserved,
        safety_stock,
    }
}

/// The event's own figure, as the `stock` table shows it (`projections.stock._quantity`).
pub(crate) fn quantity(ev: &Value, event_type: &str) -> i64 {
    match event_type {
        "StockAdjusted" => ev.get("delta").int(),
        "StockCounted" => ev.get("counted").int(),
        "StockReservationRefused" => ev.get("requested").int(),
        "LowStockAlerted" => ev.get("reorder_quantity").int(),
        "StockReceived" | "ExpiryBatchAdded" | "StockReserved" | "StockReleased"
        | "StockCommitted" | "SafetyStockSet" | "ExpiryBatchExpired" => ev.get("quantity").int(),
        _ => 0,
    }
}

/// The `reason` a `stock` row shows (`projections.stock._order_and_reason`).
pub(crate) fn reason<'a>(ev: &'a Value, event_type: &str) -> &'a str {
    match event_type {
        "StockReceived" => ev.get("reference").s(),
        "ExpiryBatchAdded" | "ExpiryBatchExpired" => ev.get("batch_id").s(),
        _ => ev.get("reason").s(),
    }
}
