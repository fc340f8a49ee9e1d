//! A compiled example function for Spate Services, with no dependencies so
//! that it starts in about a millisecond: listens on `$PORT`, answers every
//! request with a small JSON document, keeps connections alive, and holds a
//! request for `?sleep=MS` milliseconds. A CloudEvent (a `ce-id` header) is
//! acknowledged with 202 and no body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut length, mut event, mut close) = (0usize, false, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "ce-id" => event = true,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if let Some(ms) = target.split_once("sleep=").and_then(|(_, v)| v.split('&').next()?.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let response = if event {
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_string()
        } else {
            let json = format!(
                "{{\"pid\":{},\"revision\":\"{}\",\"path\":\"{}\"}}",
                std::process::id(),
                std::env::var("K_REVISION").unwrap_or_default(),
                target.replace('"', "")
            );
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}", json.len())
        };
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener =
        TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("PORT is a port number"))).expect("bind $PORT");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = handle(stream);
        });
    }
}
