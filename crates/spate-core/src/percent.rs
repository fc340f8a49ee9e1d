//! Percent-encoding of `ce-` header values, as the CloudEvents HTTP binding
//! (v1.0.2 §3.1.3.2) specifies.

/// Encodes a string for a header value: space, `"`, `%` and every byte outside
/// printable ASCII (0x21–0x7E) become `%XX` of their UTF-8 bytes. Borrows when
/// nothing needs encoding (the common case: no allocation).
pub fn encode(v: &str) -> std::borrow::Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if v.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%') {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Why a header value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// `%` not followed by two hex digits, at this byte position.
    BadEscape(usize),
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes `%XX` escapes exactly once; `%25` yields a literal `%` that is not
/// decoded again.
pub fn decode(v: &[u8]) -> Result<String, DecodeError> {
    if !v.contains(&b'%') {
        return String::from_utf8(v.to_vec()).map_err(|_| DecodeError::NotUtf8);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (v.get(i + 1).copied().and_then(hex), v.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(DecodeError::BadEscape(i)),
            }
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_single_decoding() {
        let s = "Euro € 100% \"quoted\" tab\t";
        let e = encode(s);
        assert!(e.bytes().all(|b| (0x21..=0x7E).contains(&b)));
        assert_eq!(decode(e.as_bytes()).unwrap(), s);
        assert_eq!(decode(b"%2541").unwrap(), "%41");
        assert_eq!(decode(b"plain").unwrap(), "plain");
        assert_eq!(decode(b"bad%4"), Err(DecodeError::BadEscape(3)));
        assert_eq!(decode(b"bad%zz"), Err(DecodeError::BadEscape(3)));
        assert_eq!(decode(b"%FF%FE"), Err(DecodeError::NotUtf8));
    }
}
