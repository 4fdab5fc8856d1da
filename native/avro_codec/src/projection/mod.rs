//! The projector's fold in native code: Kafka messages of the order log and the stock ledger →
//! each read-model table's rows, already in ClickHouse's RowBinary format.
//!
//! The same fold as projections/python_fold.py (`projections.orders.fold`,
//! `projections.stock.fold`: the reference, which the projector uses when this extension is
//! not built); tests fold one log both ways and compare every table. Python keeps the I/O: it
//! hands in batches of messages, the fold states ClickHouse holds for keys this process has
//! not seen, and writes the bytes it gets back.
//!
//! - `decode`: messages → events (the projector's reading thread);
//! - `orders`, `stock`: one event applied to an order's state, to a sku@location's levels;
//! - `batch`: a decoded batch folded into each table's rows;
//! - `rows`: each table's columns, by name as projections/schema.py gives them, and its rows;
//! - `rowbinary`: the RowBinary buffers, handed to Python without a copy.
//!
//! This module holds the fold states between batches (`Projection`).

mod batch;
mod decode;
mod orders;
mod rowbinary;
mod rows;
mod stock;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

pub use decode::{Batch, Decoder};
pub use rowbinary::RowBinary;

use batch::marks_of;
use decode::{Schemas, ORDERS};
use orders::{OrderState, Rules};
use rows::{level_state, order_state, Columns, TABLES};
use stock::Level;

/// A fold state and the batch that last used it.
struct Entry<T> {
    state: T,
    used: u64,
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
    schemas: Schemas,
    columns: Arc<Columns>,
    rules: Rules,
    /// `fallback(raw, topic)`, `analyst(...)`: see `Decoder`.
    fallback: PyObject,
    analyst: Option<PyObject>,
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

#[pymethods]
impl Projection {
    /// `columns`: {table: [column, ...]} for each table the fold writes, from
    /// projections/schema.py (a column it cannot write is refused here); `transitions`:
    /// `events.lifecycle.next_status` as {status: {event type: next status}}, with "" for an
    /// order with no history yet.
    #[new]
    #[pyo3(signature = (*, orders_topic, stock_topic, schemas, columns, transitions, void, end_stages, capacity, fallback, analyst=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        orders_topic: String,
        stock_topic: String,
        schemas: &Bound<'_, PyList>,
        columns: HashMap<String, Vec<String>>,
        transitions: FxHashMap<String, FxHashMap<String, String>>,
        void: FxHashSet<String>,
        end_stages: FxHashSet<String>,
        capacity: usize,
        fallback: PyObject,
        analyst: Option<PyObject>,
    ) -> PyResult<Self> {
        Ok(Projection {
            topics: [orders_topic, stock_topic],
            schemas: decode::schemas(schemas)?,
            columns: Arc::new(Columns::new(columns)?),
            rules: Rules {
                transitions,
                void,
                end_stages,
            },
            fallback,
            analyst,
            orders: FxHashMap::default(),
            levels: FxHashMap::default(),
            capacity,
            batch: 0,
            complete: false,
            forgotten: FxHashSet::default(),
        })
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
            analyst: self.analyst.as_ref().map(|analyst| analyst.clone_ref(py)),
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
                if !self.orders.contains_key(id)
                    && self.may_exist(key_hash(&id))
                    && seen_orders.insert(id)
                {
                    missing_orders.push(id.to_owned());
                }
            } else {
                let key = (d.event.get("sku").s(), d.event.get("location").s());
                if !self
                    .levels
                    .contains_key(&(key.0.to_owned(), key.1.to_owned()))
                    && self.may_exist(key_hash(&key))
                    && seen_levels.insert(key)
                {
                    missing_levels.push((key.0.to_owned(), key.1.to_owned()));
                }
            }
        }
        (missing_orders, missing_levels)
    }

    /// Order states as ClickHouse holds them: rows of the `orders` columns but the position,
    /// in their order, times as epoch seconds.
    fn load_orders(&mut self, rows: &Bound<'_, PyList>) -> PyResult<()> {
        for row in rows.iter() {
            let state = order_state(&self.columns.orders, row.downcast::<PyTuple>()?)?;
            let id: Arc<str> = Arc::from(state.order_id.as_str());
            self.orders.insert(
                id,
                Entry {
                    state: Arc::new(state),
                    used: self.batch,
                },
            );
        }
        Ok(())
    }

    /// Stock levels as ClickHouse holds them: rows of the `stock_levels` columns but the
    /// position, in their order, times as epoch seconds.
    fn load_levels(&mut self, rows: &Bound<'_, PyList>) -> PyResult<()> {
        for row in rows.iter() {
            let level = level_state(&self.columns.stock_levels, row.downcast::<PyTuple>()?)?;
            let key = (level.sku.clone(), level.location.clone());
            self.levels.insert(
                key,
                Entry {
                    state: level,
                    used: self.batch,
                },
            );
        }
        Ok(())
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
    ) -> PyResult<(
        HashMap<&'static str, (usize, Bound<'py, RowBinary>)>,
        usize,
        usize,
    )> {
        let mut by_table = Vec::new();
        for table in TABLES {
            by_table.push(marks_of(marks, table, &self.topics)?);
        }
        let decoded = std::mem::take(&mut batch.decoded);
        let (tables, duplicates, orders_written) =
            py.allow_threads(|| self.fold_batch(decoded, by_table));
        let mut out = HashMap::new();
        for (index, (name, table)) in TABLES.iter().zip(tables).enumerate() {
            let rows = table.rows;
            out.insert(*name, (rows, Bound::new(py, RowBinary::new(index, table))?));
        }
        Ok((out, duplicates, orders_written))
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
