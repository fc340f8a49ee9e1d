//! Property test: the file log behaves like a plain vector of records, across
//! reopenings and crashes that truncate (or corrupt) the active segment at any
//! byte position.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use spate_log::file::{FileLog, FileLogConfig, FsyncPolicy, Retention};
use spate_log::{EventLog, Offset};

const FRAME_HEADER: u64 = 24;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Commit {
        consumer: u8,
        frac: f64,
    },
    Reopen,
    /// Truncate the active segment at this fraction of its length.
    Crash(f64),
    /// Append junk bytes to the active segment, as a torn write would leave.
    Garbage(Vec<u8>),
    Read {
        frac: f64,
        max: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..6).prop_map(Op::Append),
        2 => (0u8..3, 0.0..=1.0f64).prop_map(|(consumer, frac)| Op::Commit { consumer, frac }),
        1 => Just(Op::Reopen),
        1 => (0.0..=1.0f64).prop_map(Op::Crash),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Op::Garbage),
        2 => (0.0..=1.0f64, 1usize..20).prop_map(|(frac, max)| Op::Read { frac, max }),
    ]
}

fn config(segment_bytes: u64) -> FileLogConfig {
    FileLogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes,
        retention: Retention { max_age: None, max_bytes: None },
        tail_cache_bytes: 512,
        queue_depth: 64,
    }
}

fn last_segment(dir: &Path) -> (Offset, std::path::PathBuf) {
    let mut segs: Vec<(Offset, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let base = p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

fn check(rt: &tokio::runtime::Runtime, log: &FileLog, model: &[Vec<u8>], committed: &[Option<Offset>; 3]) {
    assert_eq!(log.end_offset(), model.len() as Offset);
    let mut all = vec![];
    let mut from = 0;
    loop {
        let batch = rt.block_on(log.read(from, 7)).unwrap();
        if batch.is_empty() {
            break;
        }
        from = batch.last().unwrap().offset + 1;
        all.extend(batch);
    }
    assert_eq!(all.len(), model.len());
    for (i, (r, m)) in all.iter().zip(model).enumerate() {
        assert_eq!(r.offset, i as Offset);
        assert_eq!(&r.payload[..], &m[..]);
    }
    for (c, want) in committed.iter().enumerate() {
        let got = rt.block_on(log.committed_state(&format!("ns/trigger-{c}"))).unwrap().map(|s| s.committed);
        assert_eq!(got, *want, "consumer {c}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn file_log_matches_model(ops in prop::collection::vec(op(), 1..40), small_segments in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let cfg = config(if small_segments { 400 } else { 1 << 20 });
        let mut log = FileLog::open("t", &dir, cfg.clone()).unwrap();
        let mut model: Vec<Vec<u8>> = vec![];
        let mut committed: [Option<Offset>; 3] = [None; 3];
        for op in ops {
            match op {
                Op::Append(ps) => {
                    let first = rt.block_on(log.append(ps.iter().cloned().map(Bytes::from).collect())).unwrap();
                    prop_assert_eq!(first, model.len() as Offset);
                    model.extend(ps);
                }
                Op::Commit { consumer, frac } => {
                    let off = (model.len() as f64 * frac) as Offset;
                    rt.block_on(log.commit(&format!("ns/trigger-{consumer}"), off)).unwrap();
                    committed[consumer as usize] = Some(off);
                }
                Op::Reopen => {
                    log.close();
                    drop(log);
                    log = FileLog::open("t", &dir, cfg.clone()).unwrap();
                }
                Op::Crash(frac) => {
                    log.close();
                    drop(log);
                    let (base, path) = last_segment(&dir);
                    let len = std::fs::metadata(&path).unwrap().len();
                    let cut = (len as f64 * frac) as u64;
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
                    // Records of the last segment that end at or before the cut survive.
                    let mut pos = 0;
                    let mut keep = base as usize;
                    while keep < model.len() && pos + FRAME_HEADER + model[keep].len() as u64 <= cut {
                        pos += FRAME_HEADER + model[keep].len() as u64;
                        keep += 1;
                    }
                    model.truncate(keep);
                    for c in committed.iter_mut().flatten() {
                        *c = (*c).min(model.len() as Offset);
                    }
                    log = FileLog::open("t", &dir, cfg.clone()).unwrap();
                }
                Op::Garbage(junk) => {
                    log.close();
                    drop(log);
                    let (_, path) = last_segment(&dir);
                    use std::io::Write;
                    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&junk).unwrap();
                    log = FileLog::open("t", &dir, cfg.clone()).unwrap();
                }
                Op::Read { frac, max } => {
                    let from = (model.len() as f64 * frac) as Offset;
                    let got = rt.block_on(log.read(from, max)).unwrap();
                    let want: Vec<&Vec<u8>> = model.iter().skip(from as usize).take(max).collect();
                    // A read stops at a segment boundary, so it may return fewer.
                    prop_assert!(got.len() <= want.len());
                    prop_assert!(want.is_empty() == got.is_empty());
                    for (i, r) in got.iter().enumerate() {
                        prop_assert_eq!(r.offset, from + i as Offset);
                        prop_assert_eq!(&r.payload[..], &want[i][..]);
                    }
                }
            }
            check(&rt, &log, &model, &committed);
        }
    }
}

#[test]
fn group_commit_shares_fsyncs_and_survives_reopen() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let cfg = FileLogConfig { fsync: FsyncPolicy::Always, ..FileLogConfig::default() };
    let log = FileLog::open("g", &dir, cfg.clone()).unwrap();
    let n = 2000;
    rt.block_on(async {
        let mut tasks = vec![];
        for i in 0..n {
            let log = log.clone();
            tasks.push(tokio::spawn(async move { log.append(vec![Bytes::from(format!("event-{i}"))]).await.unwrap() }));
        }
        let mut offsets: Vec<Offset> = vec![];
        for t in tasks {
            offsets.push(t.await.unwrap());
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..n).collect::<Vec<_>>());
    });
    log.close();
    drop(log);
    let log = FileLog::open("g", &dir, cfg).unwrap();
    assert_eq!(log.end_offset(), n);
    let recs = rt.block_on(log.read(0, n as usize)).unwrap();
    let mut names: Vec<String> = recs.iter().map(|r| String::from_utf8(r.payload.to_vec()).unwrap()).collect();
    names.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("event-{i}")).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn retention_removes_only_consumed_segments() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let cfg = FileLogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 1000,
        retention: Retention { max_age: None, max_bytes: Some(1) },
        ..FileLogConfig::default()
    };
    let log = FileLog::open("r", &dir, cfg).unwrap();
    rt.block_on(log.commit("c", 0)).unwrap();
    for _ in 0..20 {
        rt.block_on(log.append(vec![Bytes::from(vec![7u8; 200])])).unwrap();
    }
    let segs = log.segment_count();
    assert!(segs > 3, "segments rolled: {segs}");
    // Nothing consumed: retention must keep everything even though the log is over max_bytes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rt.block_on(log.append(vec![Bytes::from_static(b"tick")])).unwrap();
    assert_eq!(log.start_offset(), 0);
    rt.block_on(log.commit("c", 12)).unwrap();
    let mut rx = log.watch_end();
    // Retention runs on the writer's housekeeping tick; wait for it to move the start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.start_offset() == 0 && std::time::Instant::now() < deadline {
        rt.block_on(log.append(vec![Bytes::from_static(b"tick")])).unwrap();
        rt.block_on(rx.changed()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let start = log.start_offset();
    assert!(start > 0 && start <= 12, "start {start} must move but not past the consumer");
    // Reading from a removed offset starts at the earliest retained one.
    let r = rt.block_on(log.read(0, 1)).unwrap();
    assert_eq!(r[0].offset, start);
}

#[test]
fn a_full_write_queue_is_reported_not_blocked_on() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = FileLogConfig { fsync: FsyncPolicy::Always, queue_depth: 1, ..FileLogConfig::default() };
    let log = FileLog::open("q", &tmp.path().join("log"), cfg).unwrap();
    // Queue appends without awaiting them: the writer syncs one batch at a time,
    // so a one-slot queue must overflow and say so at once.
    let pending: Vec<_> = (0..2000).map(|i| log.append(vec![Bytes::from(format!("e{i}"))])).collect();
    let results: Vec<_> = rt.block_on(async {
        let mut out = vec![];
        for p in pending {
            out.push(p.await);
        }
        out
    });
    let full = results.iter().filter(|r| matches!(r, Err(spate_log::LogError::Full))).count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(full > 0, "a one-slot queue must report Full");
    assert_eq!(full + ok, results.len(), "every append either landed or was refused as Full");
    assert_eq!(log.end_offset(), ok as Offset, "refused appends stored nothing");
}
