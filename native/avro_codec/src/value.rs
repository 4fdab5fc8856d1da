//! Events decoded without Python objects: the Avro body as a tree of plain values (built from
//! the same plan as the model codec, `events.avro_compiler.native_plan`), and that tree written
//! as the JSON pydantic's `model_dump_json` writes for the model.

use std::fmt::Write as _;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::civil_from_days;

pub enum Node {
    Boolean,
    Long,
    Double,
    Str,
    Bytes,
    Micros,
    Date,
    Enum(Vec<Arc<str>>),
    Optional(Box<Node>),
    Array(Box<Node>),
    Record(Arc<RecordSchema>),
}

pub struct RecordSchema {
    pub names: Vec<String>,
    nodes: Vec<Node>,
    /// Whether the field is in the model's JSON (the wire-only `event_type` and
    /// `schema_version` are not).
    in_json: Vec<bool>,
}

pub enum Value {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    Micros(i64),
    Date(i64),
    Enum(Arc<str>),
    Array(Vec<Value>),
    Record(Arc<RecordSchema>, Vec<Value>),
}

pub static NULL: Value = Value::Null;

impl Value {
    /// A record's field by name (Null when absent or not a record).
    pub fn get(&self, name: &str) -> &Value {
        if let Value::Record(schema, values) = self {
            for (i, field) in schema.names.iter().enumerate() {
                if field == name {
                    return &values[i];
                }
            }
        }
        &NULL
    }

    /// A record's field by name, to change it (None when absent or not a record).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        if let Value::Record(schema, values) = self {
            let i = schema.names.iter().position(|field| field == name)?;
            return Some(&mut values[i]);
        }
        None
    }

    /// A string value, or None (null, or not a string).
    pub fn opt_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A string or enum value; "" for null.
    pub fn s(&self) -> &str {
        match self {
            Value::Str(s) => s,
            Value::Enum(e) => e,
            _ => "",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn int(&self) -> i64 {
        match self {
            Value::Long(n) => *n,
            Value::Bool(b) => *b as i64,
            _ => 0,
        }
    }

    /// A timestamp as whole epoch seconds (floored, as `datetime(...)` without microseconds).
    pub fn seconds(&self) -> Option<i64> {
        match self {
            Value::Micros(m) => Some(m.div_euclid(1_000_000)),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(items) => items,
            _ => &[],
        }
    }
}

pub fn build(plan: &Bound<'_, PyAny>) -> PyResult<Node> {
    let plan = plan.downcast::<PyTuple>()?;
    let kind: String = plan.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "boolean" => Node::Boolean,
        "long" => Node::Long,
        "double" => Node::Double,
        "string" => Node::Str,
        "bytes" => Node::Bytes,
        "timestamp-micros" => Node::Micros,
        "date" => Node::Date,
        "enum" => {
            // The members are the model's StrEnum members: their value is what JSON shows.
            let mut values = Vec::new();
            for member in plan.get_item(2)?.try_iter()? {
                let member = member?;
                let text: String = match member.getattr("value") {
                    Ok(value) => value.extract()?,
                    Err(_) => member.extract()?,
                };
                values.push(Arc::from(text.as_str()));
            }
            Node::Enum(values)
        }
        "optional" => Node::Optional(Box::new(build(&plan.get_item(1)?)?)),
        "array" => Node::Array(Box::new(build(&plan.get_item(1)?)?)),
        "record" => {
            let mut names = Vec::new();
            let mut nodes = Vec::new();
            let mut in_json = Vec::new();
            for field in plan.get_item(2)?.try_iter()? {
                let field = field?;
                let field = field.downcast::<PyTuple>()?;
                let name: Bound<'_, PyString> = field.get_item(0)?.downcast_into()?;
                let role: String = field.get_item(1)?.extract()?;
                names.push(name.to_str()?.to_owned());
                nodes.push(build(&field.get_item(2)?)?);
                in_json.push(role == "value");
            }
            Node::Record(Arc::new(RecordSchema {
                names,
                nodes,
                in_json,
            }))
        }
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown plan node {other}"
            )))
        }
    })
}

/// Why bytes do not decode (a ValueError when it reaches Python).
pub struct DecodeError(pub String);

impl From<String> for DecodeError {
    fn from(reason: String) -> Self {
        DecodeError(reason)
    }
}

impl From<DecodeError> for PyErr {
    fn from(error: DecodeError) -> Self {
        pyo3::exceptions::PyValueError::new_err(error.0)
    }
}

/// An Avro body being read; the model codec (`lib.rs`) and the value tree share it.
pub struct Reader<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn long(&mut self) -> Result<i64, DecodeError> {
        let mut result: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self
                .data
                .get(self.pos)
                .ok_or_else(|| DecodeError("varint past the end".into()))?;
            self.pos += 1;
            result |= ((byte & 0x7F) as u64) << shift;
            if byte < 0x80 {
                return Ok(((result >> 1) as i64) ^ -((result & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError("varint longer than 10 bytes".into()));
            }
        }
    }

    #[inline]
    pub fn take(&mut self, n: i64) -> Result<&'a [u8], DecodeError> {
        if n < 0 || self.pos + n as usize > self.data.len() {
            return Err(DecodeError(format!("length {n} past the end")));
        }
        let slice = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }
}

/// 0001-01-01T00:00:00 and 9999-12-31T23:59:59.999999 in µs since 1970, and their days.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;
const MIN_DAYS: i64 = -719_162;
const MAX_DAYS: i64 = 2_932_896;

pub fn decode(node: &Node, reader: &mut Reader<'_>) -> Result<Value, DecodeError> {
    Ok(match node {
        Node::Boolean => Value::Bool(reader.take(1)?[0] == 1),
        Node::Long => Value::Long(reader.long()?),
        Node::Double => Value::Double(f64::from_le_bytes(reader.take(8)?.try_into().unwrap())),
        Node::Str => {
            let n = reader.long()?;
            let raw = reader.take(n)?;
            Value::Str(
                std::str::from_utf8(raw)
                    .map_err(|e| DecodeError(e.to_string()))?
                    .to_owned(),
            )
        }
        Node::Bytes => {
            let n = reader.long()?;
            Value::Bytes(reader.take(n)?.to_vec())
        }
        // Times a Python datetime cannot hold (years 1–9999) are left to the Python codec,
        // which rejects them with its own reason.
        Node::Micros => match reader.long()? {
            m @ MIN_MICROS..=MAX_MICROS => Value::Micros(m),
            m => {
                return Err(DecodeError(format!(
                    "timestamp {m} µs is outside years 1–9999"
                )))
            }
        },
        Node::Date => match reader.long()? {
            d @ MIN_DAYS..=MAX_DAYS => Value::Date(d),
            d => {
                return Err(DecodeError(format!(
                    "date {d} days is outside years 1–9999"
                )))
            }
        },
        Node::Enum(values) => {
            let index = reader.long()?;
            let value = usize::try_from(index)
                .ok()
                .and_then(|i| values.get(i))
                .ok_or_else(|| DecodeError(format!("enum index {index} out of range")))?;
            Value::Enum(value.clone())
        }
        Node::Optional(inner) => match reader.long()? {
            0 => Value::Null,
            1 => decode(inner, reader)?,
            other => return Err(DecodeError(format!("union branch {other} of an optional"))),
        },
        Node::Array(inner) => {
            let mut items = Vec::new();
            loop {
                let mut count = reader.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    count = -count;
                    reader.long()?; // the block's size in bytes
                }
                for _ in 0..count {
                    items.push(decode(inner, reader)?);
                }
            }
            Value::Array(items)
        }
        Node::Record(schema) => {
            let mut values = Vec::with_capacity(schema.nodes.len());
            for node in &schema.nodes {
                values.push(decode(node, reader)?);
            }
            Value::Record(schema.clone(), values)
        }
    })
}

/// `value` as pydantic v2 writes it in `model_dump_json()`: fields in model order, None as
/// null, enums by value, aware UTC datetimes as ISO 8601 with `Z` (microseconds only when not
/// zero), floats in the shortest form that reads back the same (`1.0`, `1e-7`, `1e+16`).
pub fn json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Long(n) => integer(*n, out),
        Value::Double(f) => json_float(*f, out),
        Value::Str(s) => json_string(s, out),
        Value::Enum(e) => json_string(e, out),
        Value::Bytes(b) => json_string(&String::from_utf8_lossy(b), out),
        Value::Micros(m) => {
            out.push('"');
            datetime(*m, out);
            out.push('"');
        }
        Value::Date(days) => {
            out.push('"');
            date(*days, out);
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json(item, out);
            }
            out.push(']');
        }
        Value::Record(schema, values) => {
            out.push('{');
            let mut first = true;
            for (i, field) in values.iter().enumerate() {
                if !schema.in_json[i] {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                json_string(&schema.names[i], out);
                out.push(':');
                json(field, out);
            }
            out.push('}');
        }
    }
}

fn datetime(micros: i64, out: &mut String) {
    let rest = micros.rem_euclid(86_400_000_000);
    let secs = rest / 1_000_000;
    let frac = rest % 1_000_000;
    date(micros.div_euclid(86_400_000_000), out);
    out.push('T');
    digits(secs / 3600, 2, out);
    out.push(':');
    digits(secs / 60 % 60, 2, out);
    out.push(':');
    digits(secs % 60, 2, out);
    if frac != 0 {
        out.push('.');
        digits(frac, 6, out);
    }
    out.push('Z');
}

/// Days since 1970-01-01 as YYYY-MM-DD.
fn date(days: i64, out: &mut String) {
    let (y, mo, d) = civil_from_days(days);
    digits(y as i64, 4, out);
    out.push('-');
    digits(mo as i64, 2, out);
    out.push('-');
    digits(d as i64, 2, out);
}

/// `n` (0 ≤ n) zero-padded to `width` digits (more when it needs them), as `{n:0width$}`.
fn digits(n: i64, width: usize, out: &mut String) {
    let mut buffer = [b'0'; 20];
    let mut at = buffer.len();
    let mut rest = n.unsigned_abs();
    while rest > 0 {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let start = at.min(buffer.len() - width);
    if n < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buffer[start..]).unwrap_or_default());
}

fn integer(n: i64, out: &mut String) {
    digits(n, 1, out);
}

fn json_float(f: f64, out: &mut String) {
    if !f.is_finite() {
        out.push_str("null");
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(f);
    match text.find('e') {
        Some(at) if !text[at + 1..].starts_with('-') => {
            out.push_str(&text[..=at]);
            out.push('+');
            out.push_str(&text[at + 1..]);
        }
        _ => out.push_str(text),
    }
}

pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}
