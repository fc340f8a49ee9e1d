//! CEL: any text either fails to compile (bounds first) or evaluates without
//! a panic or a stack overflow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(f) = spate_filter::Filter::cel(src) {
        let mut ev = spate_core::CloudEvent::new("1", "/s", "t");
        ev.data = Some(bytes::Bytes::from_static(br#"{"a": [1, {"b": "c"}]}"#));
        let _ = f.matches(&ev);
    }
});
