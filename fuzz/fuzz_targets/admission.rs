//! Manifest admission: any text is admitted or refused with field errors,
//! never a panic. Runs deterministically in spate-api's tests/admission.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = spate_api::admit_text(text);
});
