//! CRC-32C (Castagnoli) of record frames, from the `crc32c` crate (hardware
//! instructions where the CPU has them). Values are the standard CRC-32C, so
//! logs written before (by a hand-written table) read unchanged.

/// CRC-32C of `data`, continuing from `crc` (0 to start).
pub fn update(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vector_and_chaining() {
        assert_eq!(super::update(0, b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 1000] {
            let split = len / 3;
            let whole = super::update(0, &data[..len]);
            assert_eq!(super::update(super::update(0, &data[..split]), &data[split..len]), whole, "chained, len {len}");
        }
    }
}
