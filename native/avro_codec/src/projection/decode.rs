//! Kafka messages → decoded events, on the projector's reading thread (`Decoder`): the Avro
//! body of a message in a current schema is decoded here; anything else (an older schema
//! version, corrupt bytes, an event on the wrong topic) goes through the Python codec, which
//! re-encodes an older event in the current schema or names why the message is rejected.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::value::{self, Node, Reader, Value};

/// Which log a message is on: the order log, the stock ledger (or neither).
pub(crate) const ORDERS: u8 = 0;
pub(crate) const STOCK: u8 = 1;
const OTHER: u8 = 2;

/// Where a message sits on Kafka; every row carries the position of the event it came from.
#[derive(Clone, Copy)]
pub(crate) struct Position {
    pub(crate) topic: u8,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// A current schema: the event type it encodes, its log, how to decode it, and its personal
/// fields (none for most types).
pub(crate) struct EventSchema {
    pub(crate) type_name: String,
    pub(crate) kind: u8,
    root: Node,
    personal: Vec<Personal>,
}

/// A field the contract marks personal (`events.privacy.personal_paths`): its path into the
/// event (one or two names) and whether it is emptied to "" (a required field) or to null.
struct Personal {
    path: Vec<String>,
    empty_string: bool,
}

/// One event of a batch, decoded.
pub(crate) struct Decoded {
    pub(crate) event: Value,
    pub(crate) schema: Arc<EventSchema>,
    pub(crate) at: Position,
}

pub(crate) type Schemas = Arc<HashMap<u32, Arc<EventSchema>>>;

/// The current schemas by id, from (schema id, event type, "order" or "stock", plan, personal
/// fields as [(path, emptied to "")]).
pub(crate) fn schemas(entries: &Bound<'_, PyList>) -> PyResult<Schemas> {
    let mut by_id = HashMap::new();
    for entry in entries.iter() {
        #[allow(clippy::type_complexity)]
        let (schema_id, type_name, kind, plan, personal): (
            u32,
            String,
            String,
            Bound<'_, PyAny>,
            Vec<(Vec<String>, bool)>,
        ) = entry.extract()?;
        if let Some((path, _)) = personal.iter().find(|(path, _)| !(1..=2).contains(&path.len())) {
            return Err(PyValueError::new_err(format!(
                "personal field {path:?} of {type_name}: one or two names are supported"
            )));
        }
        let kind = match kind.as_str() {
            "order" => ORDERS,
            "stock" => STOCK,
            other => return Err(PyValueError::new_err(format!("unknown event kind {other}"))),
        };
        by_id.insert(
            schema_id,
            Arc::new(EventSchema {
                type_name,
                kind,
                root: value::build(&plan)?,
                personal: personal
                    .into_iter()
                    .map(|(path, empty_string)| Personal { path, empty_string })
                    .collect(),
            }),
        );
    }
    Ok(Arc::new(by_id))
}

/// Decodes batches for a `Projection` (its `decoder()`), on another thread than the fold's.
#[pyclass(module = "orderstream_avro", frozen)]
pub struct Decoder {
    pub(crate) topics: [String; 2],
    pub(crate) schemas: Schemas,
    /// `fallback(raw, topic)`: current-schema bytes for a message this decoder does not take
    /// (an older schema version, a corrupt body), or the CodecError's reason as a str.
    pub(crate) fallback: PyObject,
    /// `analyst(sealed, event_id, channel, order_id, customer, platform_masks)`: what analysts
    /// see of an event's customer, as (key, name, phone, e-mail), or None to leave the event as
    /// it is (`projections.privacy.AnalystView.native`). None: events are stored as they come.
    pub(crate) analyst: Option<PyObject>,
}

/// A decoded batch, waiting for `Projection.fold`.
#[pyclass(module = "orderstream_avro")]
pub struct Batch {
    pub(crate) decoded: Vec<Decoded>,
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
            let index = if topic == self.topics[0] {
                ORDERS
            } else if topic == self.topics[1] {
                STOCK
            } else {
                OTHER
            };
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
            let at = Position {
                topic: index,
                partition,
                offset,
            };
            let bytes: &[u8] = if raw.is_none() {
                &[]
            } else {
                raw.downcast::<PyBytes>()?.as_bytes()
            };
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
                    let raw = if raw.is_none() {
                        PyBytes::new(py, b"").into_any()
                    } else {
                        raw
                    };
                    rejected.push((topic.to_owned(), partition, offset, raw, reason));
                }
            }
        }
        let ledger = ledger
            .into_iter()
            .map(|((t, p), (last, n))| (t, p, last, n))
            .collect();
        Ok((
            Batch { decoded },
            rejected,
            ledger,
            order_events,
            stock_events,
        ))
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
        let found = self.decode_any(py, raw, topic, index)?;
        Ok(match (found, &self.analyst) {
            (Ok((mut event, schema)), Some(analyst)) if !schema.personal.is_empty() => {
                for_analysts(py, analyst, &mut event, &schema)?;
                Ok((event, schema))
            }
            (found, _) => found,
        })
    }

    fn decode_any(
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
            return Some(Err(format!(
                "{} does not belong on {}",
                schema.type_name, topic
            )));
        }
        if let Some(why) = out_of_bounds(&event) {
            return Some(Err(format!("{}: {}", schema.type_name, why)));
        }
        Some(Ok((event, schema.clone())))
    }
}

/// The event as analysts may see it (`events.privacy.for_analysts`, which this follows): every
/// personal field emptied, then the customer's key and masked name, phone and e-mail set as
/// `analyst` answers (it opens a sealed event with its data key), and `sealed` dropped.
fn for_analysts(
    py: Python<'_>,
    analyst: &PyObject,
    event: &mut Value,
    schema: &EventSchema,
) -> PyResult<()> {
    let customer = event.get("customer");
    let customer_fields = match customer {
        Value::Record(..) => Some((
            customer.get("key").opt_str(),
            customer.get("id").opt_str(),
            customer.get("name").opt_str(),
            customer.get("phone").opt_str(),
            customer.get("email").opt_str(),
            customer.get("phone_extension").opt_str(),
        )),
        _ => None,
    };
    let cipher = event.get("platform_ciphertext");
    let platform_masks = match cipher {
        Value::Record(..) => Some((
            cipher.get("name_mask").opt_str(),
            cipher.get("phone_mask").opt_str(),
        )),
        _ => None,
    };
    let answer = analyst.call1(
        py,
        (
            event.get("sealed").opt_str(),
            event.get("event_id").s(),
            event.get("channel").s(),
            event.get("order_id").s(),
            customer_fields,
            platform_masks,
        ),
    )?;
    if answer.is_none(py) {
        return Ok(()); // not a sealed value: left as it is, as the Python view leaves it
    }
    type Shown = (Option<String>, Option<String>, Option<String>, Option<String>);
    let (key, name, phone, email): Shown = answer.extract(py)?;
    for field in &schema.personal {
        let blank = if field.empty_string {
            Value::Str(String::new())
        } else {
            Value::Null
        };
        let slot = match field.path.as_slice() {
            [name] => event.get_mut(name),
            [parent, name] => event.get_mut(parent).and_then(|p| p.get_mut(name)),
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = blank; // (a missing parent stays missing)
        }
    }
    if let Some(slot) = event.get_mut("sealed") {
        *slot = Value::Null;
    }
    if let Some(customer @ Value::Record(..)) = event.get_mut("customer") {
        for (field, shown) in [("key", key), ("name", name), ("phone", phone), ("email", email)] {
            if let Some(slot) = customer.get_mut(field) {
                *slot = shown.map_or(Value::Null, Value::Str);
            }
        }
    }
    Ok(())
}

// The ranges the read models store: events/bounds.py, which says why (same checks, same
// order, same reasons, so both folds dead-letter the same events alike).
const TIME_HIGH_MICROS: i64 = (1i64 << 32) * 1_000_000; // exclusive: 2106-02-07 06:28:16 UTC
const SEQUENCE_MAX: i64 = u32::MAX as i64;
const LINES_MAX: usize = 4_000;
const LINE_QUANTITY_MAX: i64 = 1_000_000;

/// Why an event cannot be stored as it is (`events.bounds.out_of_bounds`), or None.
fn out_of_bounds(event: &Value) -> Option<String> {
    let sequence = event.get("sequence").int();
    if !(0..=SEQUENCE_MAX).contains(&sequence) {
        return Some(format!("sequence {sequence} is outside 0..{SEQUENCE_MAX}"));
    }
    if let Value::Array(lines) = event.get("lines") {
        if lines.len() > LINES_MAX {
            return Some(format!(
                "{} lines: at most {LINES_MAX} are stored",
                lines.len()
            ));
        }
        for (n, line) in lines.iter().enumerate() {
            let quantity = line.get("quantity").int();
            if !(-LINE_QUANTITY_MAX..=LINE_QUANTITY_MAX).contains(&quantity) {
                return Some(format!(
                    "lines[{n}].quantity {quantity} is outside ±{LINE_QUANTITY_MAX}"
                ));
            }
        }
    }
    time_out_of_bounds(event)
}

fn time_out_of_bounds(value: &Value) -> Option<String> {
    let mut path = out_of_range_time(value)?;
    path.reverse();
    let mut text = String::new();
    for step in path {
        match step {
            Step::Field(name) if text.is_empty() => text.push_str(name),
            Step::Field(name) => {
                text.push('.');
                text.push_str(name);
            }
            Step::Item(n) => text.push_str(&format!("[{n}]")),
        }
    }
    Some(format!("{text} is outside the times stored (1970 to 2106)"))
}

enum Step<'a> {
    Field(&'a str),
    Item(usize),
}

/// The path (innermost step first) to the first time outside what is stored; allocates
/// nothing unless there is one.
fn out_of_range_time(value: &Value) -> Option<Vec<Step<'_>>> {
    match value {
        Value::Micros(micros) if !(0..TIME_HIGH_MICROS).contains(micros) => Some(Vec::new()),
        Value::Record(schema, fields) => schema.names.iter().zip(fields).find_map(|(name, v)| {
            let mut path = out_of_range_time(v)?;
            path.push(Step::Field(name));
            Some(path)
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(n, item)| {
            let mut path = out_of_range_time(item)?;
            path.push(Step::Item(n));
            Some(path)
        }),
        _ => None,
    }
}
