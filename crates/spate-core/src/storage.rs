//! Compact binary encoding of an event for the log. Not a wire format for
//! users: it only has to round-trip and to reject corruption.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::CodecError;
use crate::event::{CloudEvent, ExtValue, SpecVersion};

const VERSION: u8 = 1;
const NONE: u32 = u32::MAX;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        None => out.extend_from_slice(&NONE.to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// Encodes an event for storage.
pub fn encode(ev: &CloudEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + ev.data.as_ref().map_or(0, Bytes::len));
    out.push(VERSION);
    out.push(match ev.specversion {
        SpecVersion::V10 => 10,
        SpecVersion::V03 => 3,
    });
    put_str(&mut out, &ev.id);
    put_str(&mut out, &ev.source);
    put_str(&mut out, &ev.ty);
    for o in [&ev.datacontenttype, &ev.dataschema, &ev.subject, &ev.time] {
        put_opt(&mut out, o.as_deref().map(str::as_bytes));
    }
    out.extend_from_slice(&(ev.extensions.len() as u32).to_le_bytes());
    for (name, v) in &ev.extensions {
        put_str(&mut out, name);
        match v {
            ExtValue::String(s) => {
                out.push(0);
                put_str(&mut out, s);
            }
            ExtValue::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            ExtValue::Boolean(b) => {
                out.push(2);
                out.push(u8::from(*b));
            }
        }
    }
    put_opt(&mut out, ev.data.as_deref());
    out
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(CodecError::Corrupt("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| CodecError::Corrupt("string is not UTF-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<Bytes>, CodecError> {
        let n = self.u32()?;
        if n == NONE {
            return Ok(None);
        }
        let start = self.pos;
        self.take(n as usize)?;
        Ok(Some(self.buf.slice(start..self.pos)))
    }
    fn opt_string(&mut self) -> Result<Option<String>, CodecError> {
        self.opt_bytes()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| CodecError::Corrupt("string is not UTF-8")))
            .transpose()
    }
}

/// Decodes a stored event. The data shares the record's buffer.
pub fn decode(buf: &Bytes) -> Result<CloudEvent, CodecError> {
    let mut r = Reader { buf, pos: 0 };
    if r.u8()? != VERSION {
        return Err(CodecError::Corrupt("unknown record version"));
    }
    let specversion = match r.u8()? {
        10 => SpecVersion::V10,
        3 => SpecVersion::V03,
        _ => return Err(CodecError::Corrupt("unknown specversion tag")),
    };
    let id = r.string()?;
    let source = r.string()?;
    let ty = r.string()?;
    let datacontenttype = r.opt_string()?;
    let dataschema = r.opt_string()?;
    let subject = r.opt_string()?;
    let time = r.opt_string()?;
    let n = r.u32()?;
    let mut extensions = BTreeMap::new();
    for _ in 0..n {
        let name = r.string()?;
        let v = match r.u8()? {
            0 => ExtValue::String(r.string()?),
            1 => ExtValue::Integer(i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"))),
            2 => ExtValue::Boolean(r.u8()? != 0),
            _ => return Err(CodecError::Corrupt("unknown extension tag")),
        };
        extensions.insert(name, v);
    }
    let data = r.opt_bytes()?;
    Ok(CloudEvent { specversion, id, source, ty, datacontenttype, dataschema, subject, time, extensions, data })
}
