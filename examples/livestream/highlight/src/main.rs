//! The live-streaming example's compiled function (a Knative Service run by Spate): listens on
//! `$PORT`, takes a gift as a binary-mode CloudEvent whose JSON data has `id`, `stream`, `user` and
//! `value`, and replies with a `live.result.highlight` event when the value reaches
//! `$MIN_GIFT_VALUE` (default 100); smaller gifts get 202 and no reply. Keeps connections alive,
//! one thread per connection; starts in about a millisecond.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// Request bodies above this are refused (a gift event is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

static SEQ: AtomicU64 = AtomicU64::new(0);

struct Request {
    body: Vec<u8>,
    close: bool,
}

/// Reads one request; `None` when the peer closed the connection.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((l, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "connection" => close = value.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if length > MAX_BODY {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "body too large"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { body, close }))
}

/// The reply for one gift: (status, extra headers, body).
fn answer(body: &[u8], min_value: f64) -> (u16, String, Vec<u8>) {
    let Ok(gift) = serde_json::from_slice::<Value>(body) else {
        return (400, "content-type: text/plain\r\n".into(), b"the data is not JSON\n".to_vec());
    };
    let value = gift["value"].as_f64().unwrap_or(0.0);
    if value < min_value {
        return (202, String::new(), vec![]);
    }
    let stream = gift["stream"].as_str().unwrap_or("unknown");
    let out = json!({
        "gift_id": gift["id"],
        "stream": stream,
        "user": gift["user"],
        "value": value,
        "sent_at": gift["sent_at"],
        "message": format!("{} sent a gift worth {value}!", gift["user"].as_str().unwrap_or("someone")),
    });
    let id = format!("highlight-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let headers = format!(
        "ce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /functions/highlight\r\nce-type: live.result.highlight\r\n\
         ce-partitionkey: {stream}\r\ncontent-type: application/json\r\n"
    );
    (200, headers, out.to_string().into_bytes())
}

fn handle(stream: TcpStream, min_value: f64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader)? {
        let (status, headers, body) = answer(&req.body, min_value);
        let reason = match status {
            200 => "OK",
            202 => "Accepted",
            _ => "Bad Request",
        };
        write!(out, "HTTP/1.1 {status} {reason}\r\n{headers}content-length: {}\r\n\r\n", body.len())?;
        out.write_all(&body)?;
        out.flush()?;
        if req.close {
            return Ok(());
        }
    }
    Ok(())
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let min_value: f64 = std::env::var("MIN_GIFT_VALUE").ok().and_then(|v| v.parse().ok()).unwrap_or(100.0);
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("PORT is a port number")))
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = handle(conn, min_value);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_gifts_become_highlights_and_small_ones_do_not() {
        let (status, headers, body) = answer(br#"{"id":"g1","stream":"s7","user":"ana","value":250}"#, 100.0);
        assert_eq!(status, 200);
        assert!(headers.contains("ce-type: live.result.highlight") && headers.contains("ce-partitionkey: s7"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["gift_id"].as_str(), v["value"].as_f64()), (Some("g1"), Some(250.0)));
        assert_eq!(answer(br#"{"value":99}"#, 100.0).0, 202);
        assert_eq!(answer(b"not json", 100.0).0, 400);
    }

    #[test]
    fn a_request_is_read_with_its_body_and_an_oversized_one_is_refused() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let req = read_request(&mut &raw[..]).unwrap().unwrap();
        assert_eq!((req.body.as_slice(), req.close), (&b"{}"[..], true));
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert!(read_request(&mut big.as_bytes()).is_err());
        assert!(read_request(&mut &b""[..]).unwrap().is_none());
    }
}
