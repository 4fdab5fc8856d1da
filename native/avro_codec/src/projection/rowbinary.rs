//! ClickHouse's RowBinary format: a table's rows as one buffer (`Table`), handed to Python
//! without a copy (`RowBinary`), and the buffers kept for the next batches.

use std::sync::Mutex;

use pyo3::prelude::*;

use super::decode::Position;

/// One table's rows of a batch, being written.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) rows: usize,
    pub(crate) data: Vec<u8>,
}

/// How many tables the fold writes (`rows::TABLES` names them).
pub(crate) const TABLE_COUNT: usize = 7;

/// Buffers of written batches, kept for the next ones: a batch writes ~100 MB of rows, and
/// fresh memory costs a page fault and a cleared page per 4 KiB (a fifth of the fold's time).
/// One list per table (`rows::TABLES`), as their sizes differ by orders of magnitude.
static SPARE: Mutex<[Vec<Vec<u8>>; TABLE_COUNT]> = Mutex::new([const { Vec::new() }; TABLE_COUNT]);
const SPARE_KEPT: usize = 3;

impl Table {
    /// An empty buffer for table number `table` (in `rows::TABLES`), a spare one if there is one.
    pub(crate) fn for_table(table: usize, capacity: usize) -> Self {
        let spare = SPARE.lock().ok().and_then(|mut spare| spare[table].pop());
        let mut data = spare.unwrap_or_default();
        data.clear();
        data.reserve(capacity);
        Table { rows: 0, data }
    }

    #[inline]
    pub(crate) fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.data.push((n as u8 & 0x7F) | 0x80);
            n >>= 7;
        }
        self.data.push(n as u8);
    }
    #[inline]
    pub(crate) fn s(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.data.extend_from_slice(s.as_bytes());
    }
    #[inline]
    pub(crate) fn u8(&mut self, n: u8) {
        self.data.push(n);
    }
    #[inline]
    pub(crate) fn u16(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u16).to_le_bytes());
    }
    #[inline]
    pub(crate) fn u32(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u32).to_le_bytes());
    }
    #[inline]
    pub(crate) fn u64(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as u64).to_le_bytes());
    }
    #[inline]
    pub(crate) fn i32(&mut self, n: i64) {
        self.data.extend_from_slice(&(n as i32).to_le_bytes());
    }
    #[inline]
    pub(crate) fn i64(&mut self, n: i64) {
        self.data.extend_from_slice(&n.to_le_bytes());
    }
    #[inline]
    pub(crate) fn opt_u32(&mut self, n: Option<i64>) {
        match n {
            None => self.u8(1),
            Some(n) => {
                self.u8(0);
                self.u32(n);
            }
        }
    }
    #[inline]
    pub(crate) fn strings(&mut self, items: &[String]) {
        self.varint(items.len() as u64);
        for item in items {
            self.s(item);
        }
    }
    #[inline]
    pub(crate) fn i32s(&mut self, items: &[i64]) {
        self.varint(items.len() as u64);
        for item in items {
            self.i32(*item);
        }
    }
    #[inline]
    pub(crate) fn i64s(&mut self, items: &[i64]) {
        self.varint(items.len() as u64);
        for item in items {
            self.i64(*item);
        }
    }
    /// `_topic`, `_partition`, `_offset`: where the row's message sits on Kafka.
    #[inline]
    pub(crate) fn topic(&mut self, topics: &[String; 2], at: Position) {
        self.s(&topics[at.topic as usize]);
    }
    #[inline]
    pub(crate) fn partition(&mut self, at: Position) {
        self.u16(at.partition as i64);
    }
    #[inline]
    pub(crate) fn offset(&mut self, at: Position) {
        self.u64(at.offset);
    }
}

/// A table's rows in RowBinary, handed to Python without a copy (the buffer protocol: bytes-
/// like for sockets and files).
#[pyclass(module = "orderstream_avro", frozen)]
pub struct RowBinary {
    data: Vec<u8>,
    table: usize,
}

impl RowBinary {
    pub(crate) fn new(table: usize, written: Table) -> Self {
        RowBinary {
            data: written.data,
            table,
        }
    }
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
