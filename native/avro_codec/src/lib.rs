//! Avro encoder/decoder for OrderStream's pydantic models, compiled from a plan built in Python
//! (`events.avro_native.plan`). Writes exactly the bytes fastavro writes for the same schema.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDate, PyDateAccess, PyDateTime, PyDict, PyList, PyString, PyTimeAccess,
    PyTuple, PyType, PyTzInfo, PyTzInfoAccess,
};
use pyo3::{ffi, intern};

mod projection;
mod value;

use value::Reader;

// Decoding and folding a batch makes and frees millions of small strings; mimalloc does that
// several times faster than glibc's malloc (a third of the fold's time was malloc and free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
extern "C" {
    fn prctl(option: std::os::raw::c_int, arg2: std::os::raw::c_ulong, ...) -> std::os::raw::c_int;
}
#[cfg(target_os = "linux")]
const PR_SET_THP_DISABLE: std::os::raw::c_int = 41;

enum Node {
    Boolean,
    Long,
    Double,
    Str,
    Bytes,
    TimestampMicros,
    Date,
    Enum {
        index: HashMap<String, u64>,
        members: Vec<PyObject>,
    },
    Optional(Box<Node>),
    Array(Box<Node>),
    Record(Record),
}

enum FieldKind {
    Value,
    EventType(Vec<u8>),
    SchemaVersion,
}

struct Field {
    name: Py<PyString>,
    kind: FieldKind,
    node: Node,
}

struct Record {
    model: Py<PyType>,
    fields_set: PyObject,
    fields: Vec<Field>,
}

fn err(message: String) -> PyErr {
    PyValueError::new_err(message)
}

fn build(plan: &Bound<'_, PyAny>) -> PyResult<Node> {
    let plan = plan.downcast::<PyTuple>()?;
    let kind: String = plan.get_item(0)?.extract()?;
    Ok(match kind.as_str() {
        "boolean" => Node::Boolean,
        "long" => Node::Long,
        "double" => Node::Double,
        "string" => Node::Str,
        "bytes" => Node::Bytes,
        "timestamp-micros" => Node::TimestampMicros,
        "date" => Node::Date,
        "enum" => {
            let symbols: Vec<String> = plan.get_item(1)?.extract()?;
            let members: Vec<PyObject> = plan.get_item(2)?.extract()?;
            let index = symbols
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s, i as u64))
                .collect();
            Node::Enum { index, members }
        }
        "optional" => Node::Optional(Box::new(build(&plan.get_item(1)?)?)),
        "array" => Node::Array(Box::new(build(&plan.get_item(1)?)?)),
        "record" => {
            let model: Py<PyType> = plan.get_item(1)?.downcast_into::<PyType>()?.unbind();
            let fields_set: PyObject = plan.get_item(3)?.unbind();
            let mut fields = Vec::new();
            for field in plan.get_item(2)?.try_iter()? {
                let field = field?;
                let field = field.downcast::<PyTuple>()?;
                let name: Bound<'_, PyString> = field.get_item(0)?.downcast_into()?;
                let role: String = field.get_item(1)?.extract()?;
                let kind = match role.as_str() {
                    "event_type" => {
                        FieldKind::EventType(field.get_item(3)?.extract::<String>()?.into_bytes())
                    }
                    "schema_version" => FieldKind::SchemaVersion,
                    _ => FieldKind::Value,
                };
                fields.push(Field {
                    name: name.unbind(),
                    kind,
                    node: build(&field.get_item(2)?)?,
                });
            }
            Node::Record(Record {
                model,
                fields_set,
                fields,
            })
        }
        other => return Err(err(format!("unknown plan node {other}"))),
    })
}

#[inline]
fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(crate) fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    ((if m <= 2 { y + 1 } else { y }) as i32, m as u8, d as u8)
}

fn encode_value(
    node: &Node,
    value: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
    version: i64,
) -> PyResult<()> {
    match node {
        Node::Boolean => out.push(if value.is_truthy()? { 1 } else { 0 }),
        Node::Long => write_long(out, value.extract::<i64>()?),
        Node::Double => out.extend_from_slice(&value.extract::<f64>()?.to_le_bytes()),
        Node::Str => {
            let text = value.downcast::<PyString>()?.to_str()?;
            write_long(out, text.len() as i64);
            out.extend_from_slice(text.as_bytes());
        }
        Node::Bytes => {
            let data = value.downcast::<PyBytes>()?.as_bytes();
            write_long(out, data.len() as i64);
            out.extend_from_slice(data);
        }
        Node::TimestampMicros => {
            let dt = value.downcast::<PyDateTime>()?;
            let days = days_from_civil(
                dt.get_year() as i64,
                dt.get_month() as i64,
                dt.get_day() as i64,
            );
            let mut micros = ((days * 86400
                + dt.get_hour() as i64 * 3600
                + dt.get_minute() as i64 * 60
                + dt.get_second() as i64)
                * 1_000_000)
                + dt.get_microsecond() as i64;
            let tzinfo = dt.get_tzinfo();
            let is_utc = match &tzinfo {
                Some(tz) => tz.is(&pyo3::types::timezone_utc(value.py())),
                None => true,
            };
            let offset = if is_utc {
                value.py().None().into_bound(value.py())
            } else {
                value.call_method0("utcoffset")?
            };
            if !offset.is_none() {
                let seconds: f64 = offset.call_method0("total_seconds")?.extract()?;
                micros -= (seconds * 1_000_000.0).round() as i64;
            }
            write_long(out, micros);
        }
        Node::Date => {
            let d = value.downcast::<PyDate>()?;
            write_long(
                out,
                days_from_civil(
                    d.get_year() as i64,
                    d.get_month() as i64,
                    d.get_day() as i64,
                ),
            );
        }
        Node::Enum { index, .. } => {
            let text = value.downcast::<PyString>()?.to_str()?;
            let i = index
                .get(text)
                .ok_or_else(|| err(format!("{text:?} is not an enum symbol")))?;
            write_long(out, *i as i64);
        }
        Node::Optional(inner) => {
            if value.is_none() {
                out.push(0);
            } else {
                out.push(2);
                encode_value(inner, value, out, version)?;
            }
        }
        Node::Array(inner) => {
            let items = value.downcast::<PyList>()?;
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for item in items.iter() {
                    encode_value(inner, &item, out, version)?;
                }
            }
            out.push(0);
        }
        Node::Record(record) => {
            for field in &record.fields {
                match &field.kind {
                    FieldKind::EventType(name) => {
                        write_long(out, name.len() as i64);
                        out.extend_from_slice(name);
                    }
                    FieldKind::SchemaVersion => write_long(out, version),
                    FieldKind::Value => {
                        let attribute = value.getattr(field.name.bind(value.py()))?;
                        encode_value(&field.node, &attribute, out, version)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn decode_value(
    py: Python<'_>,
    node: &Node,
    reader: &mut Reader<'_>,
    utc: &Bound<'_, PyTzInfo>,
) -> PyResult<PyObject> {
    Ok(match node {
        Node::Boolean => {
            let byte = reader.take(1)?[0];
            PyBool::new(py, byte == 1).to_owned().into_any().unbind()
        }
        Node::Long => reader.long()?.into_pyobject(py)?.into_any().unbind(),
        Node::Double => {
            let raw = reader.take(8)?;
            f64::from_le_bytes(raw.try_into().unwrap())
                .into_pyobject(py)?
                .into_any()
                .unbind()
        }
        Node::Str => {
            let n = reader.long()?;
            let raw = reader.take(n)?;
            let text = std::str::from_utf8(raw).map_err(|e| err(format!("invalid UTF-8: {e}")))?;
            PyString::new(py, text).into_any().unbind()
        }
        Node::Bytes => {
            let n = reader.long()?;
            PyBytes::new(py, reader.take(n)?).into_any().unbind()
        }
        Node::TimestampMicros => {
            let micros = reader.long()?;
            let days = micros.div_euclid(86_400_000_000);
            let rest = micros.rem_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(days);
            let seconds = rest / 1_000_000;
            PyDateTime::new(
                py,
                y,
                m,
                d,
                (seconds / 3600) as u8,
                ((seconds / 60) % 60) as u8,
                (seconds % 60) as u8,
                (rest % 1_000_000) as u32,
                Some(utc),
            )?
            .into_any()
            .unbind()
        }
        Node::Date => {
            let (y, m, d) = civil_from_days(reader.long()?);
            PyDate::new(py, y, m, d)?.into_any().unbind()
        }
        Node::Enum { members, .. } => {
            let i = reader.long()?;
            members
                .get(i as usize)
                .filter(|_| i >= 0)
                .ok_or_else(|| err(format!("enum index {i} out of range")))?
                .clone_ref(py)
        }
        Node::Optional(inner) => match reader.long()? {
            0 => py.None(),
            1 => decode_value(py, inner, reader, utc)?,
            other => return Err(err(format!("union branch {other}"))),
        },
        Node::Array(inner) => {
            let items = PyList::empty(py);
            loop {
                let mut count = reader.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    count = -count;
                    reader.long()?;
                }
                for _ in 0..count {
                    items.append(decode_value(py, inner, reader, utc)?)?;
                }
            }
            items.into_any().unbind()
        }
        Node::Record(record) => {
            let values = PyDict::new(py);
            for field in &record.fields {
                match field.kind {
                    FieldKind::Value => {
                        let value = decode_value(py, &field.node, reader, utc)?;
                        values.set_item(field.name.bind(py), value)?;
                    }
                    _ => {
                        decode_value(py, &field.node, reader, utc)?;
                    }
                }
            }
            construct_model(py, record, values)?
        }
    })
}

/// A model instance from typed values without validation: what `object.__new__` plus
/// `object.__setattr__` of pydantic's four slots do, in C calls.
fn construct_model(
    py: Python<'_>,
    record: &Record,
    values: Bound<'_, PyDict>,
) -> PyResult<PyObject> {
    unsafe {
        let new = (*std::ptr::addr_of_mut!(ffi::PyBaseObject_Type))
            .tp_new
            .ok_or_else(|| err("no tp_new".into()))?;
        let args = PyTuple::empty(py);
        let raw = new(
            record.model.as_ptr() as *mut ffi::PyTypeObject,
            args.as_ptr(),
            std::ptr::null_mut(),
        );
        let instance: PyObject = Bound::from_owned_ptr_or_err(py, raw)?.unbind();
        let set = |name: &Bound<'_, PyString>, value: *mut ffi::PyObject| -> PyResult<()> {
            if ffi::PyObject_GenericSetAttr(instance.as_ptr(), name.as_ptr(), value) < 0 {
                Err(PyErr::fetch(py))
            } else {
                Ok(())
            }
        };
        set(intern!(py, "__dict__"), values.as_ptr())?;
        set(
            intern!(py, "__pydantic_fields_set__"),
            record.fields_set.as_ptr(),
        )?;
        set(intern!(py, "__pydantic_extra__"), ffi::Py_None())?;
        set(intern!(py, "__pydantic_private__"), ffi::Py_None())?;
        Ok(instance)
    }
}

/// The encoder and decoder of one schema.
#[pyclass(frozen)]
struct CompiledSchema {
    root: Node,
}

#[pymethods]
impl CompiledSchema {
    #[new]
    fn new(plan: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(CompiledSchema { root: build(plan)? })
    }

    /// `header` + the Avro body of `value` (a model instance), as bytes.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        version: i64,
        header: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(header);
        encode_value(&self.root, value, &mut out, version)?;
        Ok(PyBytes::new(py, &out))
    }

    /// (model instance, position after it) decoded from `data` starting at `pos`.
    fn decode(&self, py: Python<'_>, data: &[u8], pos: usize) -> PyResult<(PyObject, usize)> {
        let mut reader = Reader { data, pos };
        let utc = pyo3::types::timezone_utc(py);
        let value = decode_value(py, &self.root, &mut reader, &utc)?;
        Ok((value, reader.pos))
    }
}

#[pymodule]
fn orderstream_avro(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // mimalloc asks for transparent huge pages; memory a batch frees and the next one takes
    // again then comes back as fresh 2 MiB pages, each cleared whole on first touch: a quarter
    // of the projector's time went to that. Without them it took 25 % less CPU (what
    // MIMALLOC_ALLOW_THP=0 does, for the process that loads this module: the projector, and the
    // worker through the codec).
    #[cfg(target_os = "linux")]
    unsafe {
        prctl(PR_SET_THP_DISABLE, 1, 0u64, 0u64, 0u64);
    }
    module.add_class::<CompiledSchema>()?;
    module.add_class::<projection::Projection>()?;
    module.add_class::<projection::RowBinary>()?;
    module.add_class::<projection::Decoder>()?;
    module.add_class::<projection::Batch>()?;
    Ok(())
}
