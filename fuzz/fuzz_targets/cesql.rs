//! CESQL: any text either fails to compile or evaluates without a panic or a
//! stack overflow. Runs deterministically in spate-filter's tests/bounds.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(f) = spate_filter::Filter::cesql(src) {
        let mut ev = spate_core::CloudEvent::new("1", "/s", "t");
        ev.set_extension("n", spate_core::ExtValue::Integer(1));
        let _ = f.matches(&ev);
    }
});
