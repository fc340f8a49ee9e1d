//! Opening a log costs the same whatever it retains: sealed segments open
//! from their summaries, only the last one is read. A 1 GiB log is written,
//! closed and reopened; the time to open is printed (not asserted: timing
//! depends on the machine), what it recovers is asserted.

use std::time::Instant;

use bytes::Bytes;
use spate_log::EventLog;
use spate_log::file::{FileLog, FileLogConfig, FsyncPolicy, Retention};

#[test]
fn a_one_gib_log_reopens_from_its_segment_summaries() {
    const PAYLOAD: usize = 64 * 1024;
    const RECORDS: usize = 16 * 1024 + 7; // just over 1 GiB
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileLogConfig {
        fsync: FsyncPolicy::Never,
        retention: Retention { max_age: None, max_bytes: None },
        ..FileLogConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let log = FileLog::open("big", dir.path(), cfg.clone()).unwrap();
    let written = Instant::now();
    rt.block_on(async {
        for chunk in 0..RECORDS.div_ceil(64) {
            let n = 64.min(RECORDS - chunk * 64);
            let batch: Vec<Bytes> =
                (0..n).map(|i| Bytes::from(vec![((chunk * 64 + i) % 251) as u8; PAYLOAD])).collect();
            log.append(batch).await.unwrap();
        }
    });
    let (bytes, segments) = (log.size_bytes(), log.segment_count());
    println!("wrote {} MiB in {} segments in {:?}", bytes >> 20, segments, written.elapsed());
    assert!(bytes >= 1 << 30, "at least 1 GiB retained ({bytes} bytes)");
    log.close();
    drop(log);

    let t = Instant::now();
    let log = FileLog::open("big", dir.path(), cfg).unwrap();
    let took = t.elapsed();
    println!("reopened a {} MiB log ({segments} segments) in {took:?}", bytes >> 20);
    assert_eq!(log.end_offset(), RECORDS as u64);
    assert_eq!(log.size_bytes(), bytes);
    // Reads anywhere still work through the summaries' indexes.
    rt.block_on(async {
        for at in [0u64, 1234, (RECORDS / 2) as u64, RECORDS as u64 - 1] {
            let r = log.read(at, 1).await.unwrap();
            assert_eq!(r[0].offset, at);
            assert_eq!(r[0].payload[0], (at % 251) as u8);
            assert_eq!(r[0].payload.len(), PAYLOAD);
        }
    });
}
