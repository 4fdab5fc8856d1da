//! One decoded batch folded into each table's rows (`Projection::fold_batch`), as the Python
//! fold does it (projections/python_fold.py): rows only for what a table does not hold yet
//! (the high-water marks), one row per key and batch for the tables read with FINAL, the
//! activity summed per minute and partition.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rustc_hash::{FxHashMap, FxHasher};

use super::decode::{Decoded, Position, ORDERS, STOCK};
use super::orders::{amount, fold_order, LineRow, OrderState, StageRow};
use super::rowbinary::Table;
use super::rows::{
    write_activity, write_event, write_level, write_line, write_order, write_stage, write_stock,
    ActivityRow, EventRow, TABLES,
};
use super::stock::fold_level;
use super::{Entry, Projection};
use crate::value::json;

/// Per table, the highest offset per (topic index, partition) it holds beyond the ledger
/// (None: it takes every message's rows).
pub(crate) type Marks = Option<HashMap<(u8, i32), i64>>;

/// `marks[table]` of the projector's high-water marks, {(topic, partition): offset}.
pub(crate) fn marks_of(
    marks: &Bound<'_, PyDict>,
    table: &str,
    topics: &[String; 2],
) -> PyResult<Marks> {
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
fn needs(marks: &Marks, at: Position) -> bool {
    match marks {
        None => true,
        Some(marks) => marks
            .get(&(at.topic, at.partition))
            .is_none_or(|mark| at.offset > *mark),
    }
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

impl Activity {
    fn add(&mut self, minute: i64, row: &OrderState, event_type: &str, amount: i64, at: Position) {
        let mut hasher = FxHasher::default();
        (
            minute,
            &row.channel,
            event_type,
            &row.currency,
            at.topic,
            at.partition,
        )
            .hash(&mut hasher);
        let candidates = self.index.entry(hasher.finish()).or_default();
        for &i in candidates.iter() {
            let a = &mut self.rows[i];
            if a.minute == minute
                && a.channel == row.channel
                && a.event_type == event_type
                && a.currency == row.currency
                && a.at.topic == at.topic
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

impl Projection {
    /// Each table's rows (in `TABLES` order), duplicates, orders written. `marks` in `TABLES`
    /// order.
    pub(crate) fn fold_batch(
        &mut self,
        decoded: Vec<Decoded>,
        marks: Vec<Marks>,
    ) -> (Vec<Table>, usize, usize) {
        self.batch += 1;
        let topics = self.topics.clone();
        let columns = Arc::clone(&self.columns);
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
                let key = (
                    ev.get("sku").s().to_owned(),
                    ev.get("location").s().to_owned(),
                );
                let state = self.levels.get(&key).map(|e| &e.state);
                let Some(change) = fold_level(state, ev, event_type, occurred) else {
                    duplicates += 1;
                    continue;
                };
                if needs(&m_stock, at) {
                    write_stock(
                        &mut history,
                        &columns.stock,
                        ev,
                        event_type,
                        &change,
                        &topics,
                        at,
                    );
                }
                if levels_at.insert(key.clone(), at).is_none() {
                    changed_levels.push(key.clone());
                }
                self.levels.insert(
                    key,
                    Entry {
                        state: change.level,
                        used: batch,
                    },
                );
                continue;
            }
            let order_id = ev.get("order_id").s();
            let recorded = ev.get("recorded_at").seconds().unwrap_or(0);
            if needs(&m_events, at) {
                payload.clear();
                json(ev, &mut payload);
                let row = EventRow {
                    ev,
                    event_type,
                    occurred,
                    recorded,
                    payload: &payload,
                };
                write_event(&mut events, &columns.order_events, &row, &topics, at);
            }
            let state = self.orders.get(order_id).map(|e| e.state.as_ref());
            // The order's times are when OrderStream recorded each event, not when the channel
            // says it occurred (projections/orders.py `fold`).
            let Some(change) = fold_order(state, ev, event_type, recorded, &self.rules) else {
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
                    let made = Made {
                        row: line,
                        order: row.clone(),
                        at,
                    };
                    if lines.insert(key.clone(), made).is_none() {
                        line_order.push(key);
                    }
                }
            }
            if needs(&m_stages, at) {
                for stage in change.stages {
                    let key = (id.clone(), stage.entered_seq);
                    let made = Made {
                        row: stage,
                        order: row.clone(),
                        at,
                    };
                    if stages.insert(key.clone(), made).is_none() {
                        stage_order.push(key);
                    }
                }
            }
            if needs(&m_activity, at) {
                activity.add(
                    recorded.div_euclid(60) * 60,
                    &row,
                    event_type,
                    amount(ev, event_type),
                    at,
                );
            }
            if changed_at.insert(id.clone(), at).is_none() {
                changed.push(id.clone());
            }
            if let Some(old) = self.orders.insert(
                id,
                Entry {
                    state: row,
                    used: batch,
                },
            ) {
                replaced.push(old.state);
            }
        }
        // The tables, in `TABLES` order.
        let mut orders = Table::for_table(1, 0);
        for id in &changed {
            let at = changed_at[id];
            if needs(&m_orders, at) {
                write_order(
                    &mut orders,
                    &columns.orders,
                    &self.orders[id.as_ref()].state,
                    &topics,
                    at,
                );
            }
        }
        let mut line_table = Table::for_table(2, 0);
        for key in &line_order {
            let Made { row, order, at } = &lines[key];
            write_line(
                &mut line_table,
                &columns.order_lines,
                row,
                order,
                &topics,
                *at,
            );
        }
        let mut stage_table = Table::for_table(3, 0);
        for key in &stage_order {
            let Made { row, order, at } = &stages[key];
            write_stage(
                &mut stage_table,
                &columns.fulfilment_stages,
                row,
                order,
                &topics,
                *at,
            );
        }
        let mut activity_table = Table::for_table(4, 0);
        for a in &activity.rows {
            write_activity(&mut activity_table, &columns.activity, a, &topics);
        }
        let mut level_table = Table::for_table(6, 0);
        for key in &changed_levels {
            let at = levels_at[key];
            if needs(&m_levels, at) {
                write_level(
                    &mut level_table,
                    &columns.stock_levels,
                    &self.levels[key].state,
                    &topics,
                    at,
                );
            }
        }
        let orders_written = changed.len();
        self.forget_old();
        // Freeing a batch's events and the states it replaced takes a tenth of the fold's time;
        // another thread does it, while this one goes on to write and fold the next batch.
        std::thread::spawn(move || drop((decoded, replaced, lines, stages)));
        let tables = vec![
            events,
            orders,
            line_table,
            stage_table,
            activity_table,
            history,
            level_table,
        ];
        debug_assert_eq!(tables.len(), TABLES.len());
        (tables, duplicates, orders_written)
    }
}
