#![no_main]

use libfuzzer_sys::fuzz_target;

// The first byte picks binary, structured or batch mode; the rest is the body
// (and, in binary mode, a header value). The decoder must never panic.
fuzz_target!(|data: &[u8]| {
    spate_core::http_codec::decode_fuzz_input(data);
});
