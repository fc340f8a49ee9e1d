//! CRC-32C (Castagnoli), table-driven. Guards every record frame.

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static TABLE: [u32; 256] = table();

/// CRC-32C of `data`, continuing from `crc`. Uses the SSE 4.2 instruction
/// when the CPU has it (detected once), else the table.
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the feature was detected at run time just above.
            return unsafe { update_sse42(crc, data) };
        }
    }
    update_table(crc, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = u64::from(!crc);
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        c = _mm_crc32_u64(c, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut c = c as u32;
    for b in chunks.remainder() {
        c = _mm_crc32_u8(c, *b);
    }
    !c
}

fn update_table(mut crc: u32, data: &[u8]) -> u32 {
    crc = !crc;
    for b in data {
        crc = TABLE[((crc ^ u32::from(*b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vector() {
        assert_eq!(super::update(0, b"123456789"), 0xE306_9283);
        assert_eq!(super::update_table(0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn hardware_and_table_agree() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 1000] {
            let split = len / 3;
            let whole = super::update_table(0, &data[..len]);
            assert_eq!(super::update(0, &data[..len]), whole, "len {len}");
            assert_eq!(super::update(super::update(0, &data[..split]), &data[split..len]), whole, "chained, len {len}");
        }
    }
}
