//! The embedded file log: append-only segments with a sparse index, group
//! commit, per-consumer offsets, retention and torn-tail recovery.
//!
//! On disk, one directory per log:
//! - `<base offset, 20 digits>.log`: frames `[len u32][crc32c u32][offset u64][ts i64][payload]`
//!   (little endian; the CRC covers offset, timestamp and payload);
//! - `<base>.idx`: a sealed segment's summary (end offset, size, last timestamp) and sparse
//!   index, `(offset u64, position u64)` pairs, with a CRC: `open` reads it instead of the segment;
//! - `consumers/<name>.off`: a consumer's committed offset and its CRC, then its acknowledged
//!   ranges above that offset and their CRC.
//!
//! One writer per log owns the active segment, but no thread: appenders queue
//! requests in the log's inbox and the first one into an idle inbox schedules
//! a drain on the blocking pool, which writes every queued request with one
//! `write` and, under `FsyncPolicy::Always`, one `fdatasync` before
//! acknowledging them all (group commit), until the inbox is empty. An idle log
//! costs no thread; one process-wide housekeeping thread runs the timed work
//! (interval fsync, retention) of every open log. Records become visible to
//! readers only once acknowledged.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::{AckState, BoxFuture, EventLog, LogBackend, LogError, Offset, Record, crc, now_ms};

const HEADER: usize = 24;
/// A sparse index entry every this many bytes of segment.
const INDEX_EVERY: u64 = 64 * 1024;
/// Largest record the log accepts (the data plane limits events far below this).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after the data is synced (group commit). The default.
    Always,
    /// Acknowledge after the write; sync at this interval. A machine crash may
    /// lose up to one interval of acknowledged events; a process crash loses none.
    Interval(Duration),
    /// Acknowledge after the write; let the OS sync. Survives process crashes only.
    Never,
}

/// Deletion of whole sealed segments that every consumer has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete consumed segments whose newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest consumed segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct FileLogConfig {
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub retention: Retention,
    /// Bytes of recent records kept in memory so tailing readers never touch disk.
    pub tail_cache_bytes: usize,
    /// Appends that may wait for the writer before `LogError::Full` is returned.
    pub queue_depth: usize,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 * 1024 * 1024,
            retention: Retention { max_age: Some(Duration::from_secs(24 * 3600)), max_bytes: None },
            tail_cache_bytes: 4 * 1024 * 1024,
            queue_depth: 4096,
        }
    }
}

struct Segment {
    base: Offset,
    /// Offset after the last record in this segment.
    end: Offset,
    size: u64,
    last_ts: i64,
    file: Arc<File>,
    path: PathBuf,
    /// (offset, position) every `INDEX_EVERY` bytes, first entry at (base, 0).
    index: Vec<(Offset, u64)>,
}

impl Segment {
    fn position_for(&self, offset: Offset) -> (Offset, u64) {
        let i = self.index.partition_point(|(o, _)| *o <= offset);
        if i == 0 { (self.base, 0) } else { self.index[i - 1] }
    }
}

struct Shared {
    segments: Vec<Segment>,
    /// Recent records, contiguous, ending at the log's end.
    cache: VecDeque<Record>,
    cache_bytes: usize,
    consumers: HashMap<String, Consumer>,
    /// Consumers whose position in memory is not yet written.
    pending: BTreeSet<String>,
    /// A `Committer::flush` is scheduled or running.
    flushing: bool,
    closed: bool,
}

struct AppendReq {
    payloads: Vec<Bytes>,
    reply: oneshot::Sender<Result<Offset, LogError>>,
}

/// What the writer is asked to do.
enum Job {
    Append(AppendReq),
    /// Write the pending consumer positions ([`Committer::flush`]) after the
    /// appends queued with it: under load a drain runs anyway, so a commit
    /// costs no extra blocking-pool task.
    Flush,
}

/// Jobs waiting for the log's writer, and whether a drain is scheduled.
struct Inbox {
    queue: Mutex<Queue>,
    /// Appends that may wait before `LogError::Full` is returned.
    depth: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// A drain is scheduled or running: the next job needs none of its own.
    draining: bool,
    closed: bool,
}

/// Why a job was not queued.
enum Refused {
    Full,
    Closed,
}

impl Inbox {
    /// Queues `job`; true if the caller must schedule a drain (the inbox was idle).
    fn push(&self, job: Job) -> Result<bool, Refused> {
        let mut q = self.queue.lock().expect("inbox lock");
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.jobs.len() >= self.depth {
            return Err(Refused::Full);
        }
        q.jobs.push_back(job);
        Ok(!std::mem::replace(&mut q.draining, true))
    }

    /// The next batch (at least one job, then more up to 8 MiB of payload) and
    /// whether it asks for a flush; `None`, marking the inbox idle, when empty.
    fn take(&self) -> Option<(Vec<AppendReq>, bool)> {
        let mut q = self.queue.lock().expect("inbox lock");
        if q.jobs.is_empty() {
            q.draining = false;
            return None;
        }
        let (mut batch, mut bytes, mut flush) = (vec![], 0usize, false);
        while bytes < 8 * 1024 * 1024 {
            match q.jobs.pop_front() {
                Some(Job::Append(r)) => {
                    bytes += r.payloads.iter().map(Bytes::len).sum::<usize>();
                    batch.push(r);
                }
                Some(Job::Flush) => flush = true,
                None => break,
            }
        }
        Some((batch, flush))
    }
}

/// Writes queued jobs, in queue order, until the inbox is empty. Taking jobs
/// under the writer's lock keeps batches in order whoever drains.
fn drain(inbox: &Inbox, writer: &Mutex<Writer>) {
    let mut w = writer.lock().expect("writer lock");
    while let Some((batch, flush)) = inbox.take() {
        w.handle(batch, flush);
    }
}

/// Runs a drain on the blocking pool (on a short-lived thread without a runtime).
fn schedule_drain(inbox: Arc<Inbox>, writer: Arc<Mutex<Writer>>) {
    let run = move || drain(&inbox, &writer);
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(run)),
        Err(_) => {
            if let Err(e) = std::thread::Builder::new().name("log-drain".into()).spawn(run) {
                tracing::error!(error = %e, "cannot start a thread to write the log");
            }
        }
    }
}

/// Every open log's writer, for the one housekeeping thread.
type Writers = Mutex<Vec<Weak<Mutex<Writer>>>>;

/// How often the housekeeping thread looks at each open log.
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(100);

/// Registers a writer with the process-wide housekeeping thread (started on
/// first use), which runs each idle writer's timed work: an interval fsync
/// that is due, retention. A busy writer runs it after its batch instead.
fn housekeep(writer: &Arc<Mutex<Writer>>) {
    static WRITERS: OnceLock<Writers> = OnceLock::new();
    let writers = WRITERS.get_or_init(|| {
        let started = std::thread::Builder::new().name("log-housekeeping".into()).spawn(|| {
            loop {
                std::thread::sleep(HOUSEKEEPING_TICK);
                let Some(all) = WRITERS.get() else { continue };
                let live: Vec<Arc<Mutex<Writer>>> = {
                    let mut g = all.lock().expect("housekeeping lock");
                    g.retain(|w| w.strong_count() > 0);
                    g.iter().filter_map(Weak::upgrade).collect()
                };
                for w in live {
                    if let Ok(mut w) = w.try_lock() {
                        w.housekeeping();
                    }
                }
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the log housekeeping thread: retention and interval fsync run only after writes");
        }
        Mutex::new(Vec::new())
    });
    writers.lock().expect("housekeeping lock").push(Arc::downgrade(writer));
}

/// A log stored in files. Clone the `Arc` to share it.
pub struct FileLog {
    name: String,
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    inbox: Arc<Inbox>,
    end_rx: watch::Receiver<Offset>,
    writer: Arc<Mutex<Writer>>,
    committer: Committer,
}

fn seg_path(dir: &Path, base: Offset, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

fn encode_frame(out: &mut Vec<u8>, offset: Offset, ts: i64, payload: &[u8]) {
    let mut c = crc::update(0, &offset.to_le_bytes());
    c = crc::update(c, &ts.to_le_bytes());
    c = crc::update(c, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses one frame at the start of `buf`. `None` if incomplete or corrupt.
fn parse_frame(buf: &[u8]) -> Option<(Offset, i64, &[u8])> {
    let h = buf.get(..HEADER)?;
    let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
    if len > MAX_RECORD {
        return None;
    }
    let stored_crc = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let offset = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let ts = i64::from_le_bytes(h[16..24].try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    let mut c = crc::update(0, &h[8..16]);
    c = crc::update(c, &h[16..24]);
    c = crc::update(c, payload);
    (c == stored_crc).then_some((offset, ts, payload))
}

/// Scans a segment from the start, returning the valid prefix's length and
/// rebuilding its index. Stops at the first incomplete, corrupt or
/// out-of-sequence frame.
fn scan_segment(path: &Path, base: Offset) -> Result<Scan, LogError> {
    let data = fs::read(path).map_err(|e| LogError::io(path, e))?;
    let mut pos = 0usize;
    let mut next = base;
    let mut last_ts = 0;
    let mut index = vec![(base, 0)];
    let mut last_indexed = 0u64;
    while let Some((off, ts, payload)) = parse_frame(&data[pos..]) {
        if off != next {
            break;
        }
        if pos as u64 - last_indexed >= INDEX_EVERY {
            index.push((off, pos as u64));
            last_indexed = pos as u64;
        }
        pos += HEADER + payload.len();
        next += 1;
        last_ts = ts;
    }
    Ok(Scan { valid: pos as u64, end: next, last_ts, index })
}

/// Magic of a sealed segment's `.idx` file (version 2: with the segment's summary).
const IDX_MAGIC: &[u8; 8] = b"SPIDX002";

/// The `.idx` of a sealed segment: magic, `end`, `size`, `last_ts`, the index
/// pairs, and a CRC-32C of all of it. Lets `open` skip reading the segment.
fn encode_sealed_index(seg: &Segment) -> Vec<u8> {
    let mut b = Vec::with_capacity(40 + seg.index.len() * 16);
    b.extend_from_slice(IDX_MAGIC);
    b.extend_from_slice(&seg.end.to_le_bytes());
    b.extend_from_slice(&seg.size.to_le_bytes());
    b.extend_from_slice(&seg.last_ts.to_le_bytes());
    for (o, p) in &seg.index {
        b.extend_from_slice(&o.to_le_bytes());
        b.extend_from_slice(&p.to_le_bytes());
    }
    let c = crc::update(0, &b);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

/// Reads a sealed segment's summary; `None` (scan instead) if absent, of an
/// older format, corrupt, or not matching the segment file's length.
fn read_sealed_index(path: &Path, base: Offset, file_len: u64) -> Option<Scan> {
    let b = fs::read(path).ok()?;
    if b.len() < 36 || &b[..8] != IDX_MAGIC || (b.len() - 36) % 16 != 0 {
        return None;
    }
    let (body, c) = b.split_at(b.len() - 4);
    if crc::update(0, body).to_le_bytes() != c {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let (end, size, last_ts) = (word(8), word(16), word(24) as i64);
    let index: Vec<(Offset, u64)> = (32..body.len()).step_by(16).map(|i| (word(i), word(i + 8))).collect();
    let ok = size == file_len && end >= base && index.first() == Some(&(base, 0));
    ok.then_some(Scan { valid: size, end, last_ts, index })
}

/// What a scan of a segment found: its valid prefix and rebuilt index.
struct Scan {
    valid: u64,
    end: Offset,
    last_ts: i64,
    index: Vec<(Offset, u64)>,
}

fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new().read(true).append(true).create(true).open(path).map_err(|e| LogError::io(path, e))
}

fn consumer_file_name(consumer: &str) -> String {
    // Consumer names are resource names with '/' separators; keep the file name flat and reversible.
    consumer
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect::<String>()
        + ".off"
}

/// One consumer's position as kept in memory, with its open file.
struct Consumer {
    state: AckState,
    /// `None` until the first write creates the file.
    file: Option<Arc<File>>,
    /// Why the last write of this position failed (reported by the next commit).
    error: Option<String>,
    /// How many positions were committed (the sequence number of `state`).
    seq: u64,
    /// The last sequence number written, and the last failed write (its
    /// sequence number and error): what a commit's future waits for.
    written: watch::Sender<Written>,
}

type Written = (u64, Option<(u64, String)>);

impl Consumer {
    fn new(state: AckState, file: Option<Arc<File>>) -> Consumer {
        Consumer { state, file, error: None, seq: 0, written: watch::channel((0, None)).0 }
    }
}

/// Writes consumer positions in the log's drain (on the blocking pool by
/// itself when the inbox is full or closed), never on a runtime worker.
/// Coalescing: while a write runs, further commits replace a consumer's
/// pending position, so a burst costs one write per consumer.
#[derive(Clone)]
struct Committer {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    /// Held while writing or deleting consumer files, so a deleted consumer's
    /// file is never written again by a write that started before.
    io: Arc<Mutex<()>>,
}

impl Committer {
    /// Writes every pending position until none is left.
    fn flush(&self) {
        let _io = self.io.lock().expect("committer io lock");
        loop {
            let work: Vec<(String, AckState, Option<Arc<File>>, u64)> = {
                let mut g = self.shared.lock().expect("log lock");
                let names = std::mem::take(&mut g.pending);
                if names.is_empty() {
                    g.flushing = false;
                    return;
                }
                names
                    .into_iter()
                    .filter_map(|n| {
                        let c = g.consumers.get(&n)?;
                        Some((n, c.state.clone(), c.file.clone(), c.seq))
                    })
                    .collect()
            };
            for (name, state, file, seq) in work {
                let written = self.write(&name, &state, file);
                let mut g = self.shared.lock().expect("log lock");
                if let Some(c) = g.consumers.get_mut(&name) {
                    match written {
                        Ok(f) => {
                            c.file = Some(f);
                            c.written.send_if_modified(|w| {
                                let newer = seq > w.0;
                                w.0 = w.0.max(seq);
                                newer
                            });
                        }
                        Err(e) => {
                            c.error = Some(e.to_string());
                            c.written.send_modify(|w| w.1 = Some((seq, e.to_string())));
                        }
                    }
                }
            }
        }
    }

    /// One positioned write: it survives a process crash without an fsync; a
    /// machine crash may roll the position back, which only redelivers. A new
    /// consumer's file (and its directory entry) is synced once.
    fn write(&self, consumer: &str, state: &AckState, file: Option<Arc<File>>) -> Result<Arc<File>, LogError> {
        if let Some(f) = file {
            f.write_all_at(&consumer_record(state), 0).map_err(|e| LogError::io(&self.dir, e))?;
            return Ok(f);
        }
        let cdir = self.dir.join("consumers");
        let path = cdir.join(consumer_file_name(consumer));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        f.write_all_at(&consumer_record(state), 0).map_err(|e| LogError::io(&path, e))?;
        f.sync_all().map_err(|e| LogError::io(&path, e))?;
        fsync_dir(&cdir);
        Ok(Arc::new(f))
    }

    /// Deletes a consumer's file (already forgotten in memory).
    fn delete(&self, consumer: &str) -> Result<(), LogError> {
        let _io = self.io.lock().expect("committer io lock");
        let path = self.dir.join("consumers").join(consumer_file_name(consumer));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io(&path, e)),
        }
    }
}

/// The consumer file: the committed offset and its CRC (12 bytes; the format
/// before acknowledged ranges existed), then the ranges and their CRC, then the
/// attempts already made at unfinished offsets and their CRC (absent in files
/// written before). Written with one positioned write; a torn block is ignored
/// (redelivery, or a retry budget started again: never loss).
fn consumer_record(state: &AckState) -> Vec<u8> {
    let mut b = offset_record(state.committed).to_vec();
    let start = b.len();
    state.encode_ranges(&mut b);
    let crc = crc::update(0, &b[start..]);
    b.extend_from_slice(&crc.to_le_bytes());
    let start = b.len();
    state.encode_attempts(&mut b);
    let crc = crc::update(0, &b[start..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Largest consumer file: the offset, then both blocks at their most entries.
const MAX_CONSUMER_RECORD: u64 =
    12 + (8 + 16 * crate::acks::MAX_ACK_RANGES as u64) + (8 + 12 * crate::acks::MAX_ACK_RANGES as u64);

/// One CRC-checked block (`count: u32`, `count` entries of `entry` bytes, CRC):
/// the block's body and what follows it; `None` if torn, corrupt or absent.
fn crc_block(b: &[u8], entry: usize) -> Option<(&[u8], &[u8])> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let len = 4 + entry.checked_mul(n)?;
    let (body, crc) = (b.get(..len)?, b.get(len..len + 4)?);
    (crc == crc::update(0, body).to_le_bytes()).then(|| (body, &b[len + 4..]))
}

/// Reads a consumer file; `None` if even the committed offset is unreadable.
fn read_consumer_record(file: &File) -> Option<AckState> {
    let len = file.metadata().ok()?.len().min(MAX_CONSUMER_RECORD) as usize;
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, 0).ok()?;
    if b.len() < 12 || b[8..12] != crc::update(0, &b[..8]).to_le_bytes() {
        return None;
    }
    let committed = u64::from_le_bytes(b[..8].try_into().expect("8"));
    let Some((ranges, rest)) = crc_block(&b[12..], 16) else { return Some(AckState::at(committed)) };
    let acked = AckState::decode_ranges(ranges).unwrap_or_default();
    let attempts = crc_block(rest, 12).and_then(|(body, _)| AckState::decode_attempts(body)).unwrap_or_default();
    Some(AckState { committed, acked, attempts })
}

fn offset_record(offset: Offset) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&offset.to_le_bytes());
    b[8..].copy_from_slice(&crc::update(0, &offset.to_le_bytes()).to_le_bytes());
    b
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A log's segments as found on disk: sealed ones from their summaries, the
/// last one scanned; a torn tail truncated; a segment after a gap removed
/// with everything after it. An empty log gets its first segment.
fn recover_segments(name: &str, dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut bases: Vec<Offset> = fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, e))?
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    let mut segments = Vec::new();
    let last = bases.len().saturating_sub(1);
    for (i, base) in bases.iter().copied().enumerate() {
        let path = seg_path(dir, base, "log");
        // Sealed segments open from their summary; only the last one (and
        // any sealed one without a valid summary) is read and checked.
        let len = fs::metadata(&path).map_err(|e| LogError::io(&path, e))?.len();
        let sealed = if i < last { read_sealed_index(&seg_path(dir, base, "idx"), base, len) } else { None };
        let Scan { valid, end, last_ts, index } = match sealed {
            Some(scan) => scan,
            None => scan_segment(&path, base)?,
        };
        if let Some(prev) = segments.last().map(|s: &Segment| s.end)
            && prev != base
        {
            // A gap means a later segment cannot be trusted: drop it and everything after.
            tracing::warn!(log = name, segment = %path.display(), "segment does not follow its predecessor; removing it");
            for b in &bases[i..] {
                let _ = fs::remove_file(seg_path(dir, *b, "log"));
                let _ = fs::remove_file(seg_path(dir, *b, "idx"));
            }
            break;
        }
        let file = open_rw(&path)?;
        let len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
        if valid < len {
            tracing::warn!(log = name, segment = %path.display(), kept = valid, dropped = len - valid, "torn tail truncated");
            file.set_len(valid).map_err(|e| LogError::io(&path, e))?;
            file.sync_all().map_err(|e| LogError::io(&path, e))?;
            // Any later segment now follows a gap.
            if i < last {
                for b in &bases[i + 1..] {
                    let _ = fs::remove_file(seg_path(dir, *b, "log"));
                    let _ = fs::remove_file(seg_path(dir, *b, "idx"));
                }
                segments.push(Segment { base, end, size: valid, last_ts, file: Arc::new(file), path, index });
                break;
            }
        }
        segments.push(Segment { base, end, size: valid, last_ts, file: Arc::new(file), path, index });
    }
    if segments.is_empty() {
        let path = seg_path(dir, 0, "log");
        let file = open_rw(&path)?;
        fsync_dir(dir);
        segments.push(Segment {
            base: 0,
            end: 0,
            size: 0,
            last_ts: 0,
            file: Arc::new(file),
            path,
            index: vec![(0, 0)],
        });
    }
    Ok(segments)
}

/// Each consumer's position, clamped to the recovered end (a torn tail it had passed is gone).
fn recover_consumers(
    name: &str,
    dir: &Path,
    segments: &[Segment],
) -> Result<(HashMap<String, Consumer>, Offset), LogError> {
    let mut consumers = HashMap::new();
    let cdir = dir.join("consumers");
    for e in fs::read_dir(&cdir).map_err(|e| LogError::io(&cdir, e))?.flatten() {
        let p = e.path();
        let Some(fname) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".off")) else {
            continue;
        };
        let consumer = decode_consumer_name(fname);
        let file = OpenOptions::new().read(true).write(true).open(&p).map_err(|e| LogError::io(&p, e))?;
        let state = read_consumer_record(&file).unwrap_or_else(|| {
                tracing::warn!(log = name, consumer = %consumer, "consumer offset unreadable; restarting it from the log start");
                AckState::at(segments[0].base)
            });
        consumers.insert(consumer, Consumer::new(state, Some(Arc::new(file))));
    }
    let end = segments.last().expect("at least one segment").end;
    for (consumer, c) in consumers.iter_mut() {
        if c.state.committed > end {
            // The tail this consumer had passed was lost (torn write): it resumes at the new end.
            tracing::warn!(log = name, consumer = %consumer, committed = c.state.committed, end, "committed offset past the recovered end; clamped");
            c.state = AckState::at(end);
            if let Some(f) = &c.file {
                let _ = f.write_all_at(&consumer_record(&c.state), 0);
            }
        } else {
            c.state = std::mem::take(&mut c.state).normalized(end);
        }
    }
    Ok((consumers, end))
}

impl FileLog {
    /// Opens (creating if needed) the log in `dir`, recovering from a torn tail.
    pub fn open(name: &str, dir: &Path, config: FileLogConfig) -> Result<Arc<FileLog>, LogError> {
        fs::create_dir_all(dir.join("consumers")).map_err(|e| LogError::io(dir, e))?;
        let segments = recover_segments(name, dir)?;
        let (consumers, end) = recover_consumers(name, dir, &segments)?;
        let (end_tx, end_rx) = watch::channel(end);
        let shared = Arc::new(Mutex::new(Shared {
            segments,
            cache: VecDeque::new(),
            cache_bytes: 0,
            consumers,
            pending: BTreeSet::new(),
            flushing: false,
            closed: false,
        }));
        let committer = Committer { dir: dir.to_path_buf(), shared: shared.clone(), io: Arc::new(Mutex::new(())) };
        let inbox = Arc::new(Inbox {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), draining: false, closed: false }),
            depth: config.queue_depth,
        });
        let writer = Writer {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            shared: shared.clone(),
            committer: committer.clone(),
            end_tx,
            next: end,
            buf: Vec::new(),
            errors: crate::Throttle::default(),
            dirty: false,
            last_sync: Instant::now(),
            last_retention: Instant::now(),
            closed: false,
        };
        let writer = Arc::new(Mutex::new(writer));
        housekeep(&writer);
        Ok(Arc::new(FileLog {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            shared,
            inbox,
            end_rx,
            writer,
            committer,
        }))
    }

    /// Refuses further appends, writes the queued ones (here, or waits for the
    /// drain writing them), syncs, and writes every pending consumer position.
    /// Blocks: call it off the runtime.
    pub fn close(&self) {
        self.inbox.queue.lock().expect("inbox lock").closed = true;
        {
            let mut w = self.writer.lock().expect("writer lock");
            while let Some((batch, flush)) = self.inbox.take() {
                w.handle(batch, flush);
            }
            w.finish();
        }
        self.shared.lock().expect("log lock").closed = true;
        self.committer.flush();
    }

    /// Queues a job, scheduling a drain if the inbox was idle.
    fn submit(&self, job: Job) -> Result<(), Refused> {
        if self.inbox.push(job)? {
            schedule_drain(self.inbox.clone(), self.writer.clone());
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total bytes in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().expect("log lock").segments.iter().map(|s| s.size).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.shared.lock().expect("log lock").segments.len()
    }

    /// Serves a read from memory (the tail cache, or nothing to read), or
    /// says where on disk to read it.
    fn locate(&self, from: Offset, max: usize) -> Result<Vec<Record>, DiskRead> {
        let end = *self.end_rx.borrow();
        let g = self.shared.lock().expect("log lock");
        let start = g.segments.first().map_or(0, |s| s.base);
        let from = from.max(start);
        if from >= end || max == 0 {
            return Ok(vec![]);
        }
        if let Some(first) = g.cache.front()
            && from >= first.offset
        {
            let skip = (from - first.offset) as usize;
            return Ok(g.cache.iter().skip(skip).take(max).filter(|r| r.offset < end).cloned().collect());
        }
        let i = g.segments.partition_point(|s| s.base <= from).saturating_sub(1);
        let s = &g.segments[i];
        let (next, pos) = s.position_for(from);
        Err(DiskRead { file: s.file.clone(), path: s.path.clone(), pos, next, from, max, seg_end: s.end.min(end) })
    }
}

/// A read that has to go to a segment file (a reader far behind the tail).
struct DiskRead {
    file: Arc<File>,
    path: PathBuf,
    pos: u64,
    next: Offset,
    from: Offset,
    max: usize,
    seg_end: Offset,
}

impl DiskRead {
    fn read(self) -> Result<Vec<Record>, LogError> {
        let DiskRead { file, path, pos, mut next, from, max, seg_end } = self;
        let want_end = (from + max as Offset).min(seg_end);
        let mut out = Vec::with_capacity((want_end - from) as usize);
        let mut pos = pos;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut have = 0usize;
        let mut at = 0usize;
        while next < want_end {
            if have - at < HEADER || {
                let len = u32::from_le_bytes(chunk[at..at + 4].try_into().expect("4")) as usize;
                have - at < HEADER + len
            } {
                // Refill: move the remainder to the front and read more.
                chunk.copy_within(at..have, 0);
                have -= at;
                at = 0;
                if have >= HEADER {
                    let len = u32::from_le_bytes(chunk[..4].try_into().expect("4")) as usize;
                    if HEADER + len > chunk.len() {
                        chunk.resize(HEADER + len, 0);
                    }
                }
                let n = file.read_at(&mut chunk[have..], pos).map_err(|e| LogError::io(&path, e))?;
                if n == 0 {
                    return Err(LogError::io(
                        &path,
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "segment shorter than its index"),
                    ));
                }
                pos += n as u64;
                have += n;
                continue;
            }
            let Some((off, ts, payload)) = parse_frame(&chunk[at..have]) else {
                return Err(LogError::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt frame at offset {next}")),
                ));
            };
            at += HEADER + payload.len();
            if off >= from {
                out.push(Record { offset: off, timestamp_ms: ts, payload: Bytes::copy_from_slice(payload) });
            }
            next = off + 1;
        }
        Ok(out)
    }
}

fn decode_consumer_name(f: &str) -> String {
    let b = f.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&f[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventLog for FileLog {
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Offset, LogError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.submit(Job::Append(AppendReq { payloads, reply })).map_err(|r| match r {
            Refused::Full => LogError::Full,
            Refused::Closed => LogError::Closed(self.name.clone()),
        });
        let name = self.name.clone();
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| LogError::Closed(name))?
        })
    }

    fn read(&self, from: Offset, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        // From memory at once; from disk on the blocking pool, never on a runtime worker.
        let located = self.locate(from, max);
        Box::pin(async move {
            match located {
                Ok(records) => Ok(records),
                Err(disk) => match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let path = disk.path.display().to_string();
                        rt.spawn_blocking(move || disk.read()).await.unwrap_or_else(|e| {
                            Err(LogError::Io { path, source: std::io::Error::other(e.to_string()) })
                        })
                    }
                    Err(_) => disk.read(),
                },
            }
        })
    }

    fn end_offset(&self) -> Offset {
        *self.end_rx.borrow()
    }

    fn start_offset(&self) -> Offset {
        self.shared.lock().expect("log lock").segments.first().map_or(0, |s| s.base)
    }

    fn watch_end(&self) -> watch::Receiver<Offset> {
        self.end_rx.clone()
    }

    fn commit_state(&self, consumer: &str, state: AckState) -> BoxFuture<'_, Result<(), LogError>> {
        let mut g = self.shared.lock().expect("log lock");
        if g.closed {
            return Box::pin(std::future::ready(Err(LogError::Closed(self.name.clone()))));
        }
        // The name is copied only for a consumer seen for the first time (not on every commit).
        if !g.consumers.contains_key(consumer) {
            let fresh = Consumer::new(AckState::at(Offset::MAX), None);
            g.consumers.insert(consumer.to_string(), fresh);
        }
        let c = g.consumers.get_mut(consumer).expect("inserted above");
        let written = c.written.subscribe();
        if c.state == state && c.error.is_none() {
            // Nothing new: resolved once the position already asked for is written.
            return Box::pin(settled(written, c.seq, self.dir.display().to_string()));
        }
        c.state = state;
        c.seq += 1;
        let target = c.seq;
        let failed = c.error.take();
        if !g.pending.contains(consumer) {
            g.pending.insert(consumer.to_string());
        }
        let start = !std::mem::replace(&mut g.flushing, true);
        drop(g);
        // In the log's drain, after the appends queued before it; on the blocking pool
        // by itself when the inbox is full or closed (inline without a runtime, as
        // `blocking` does).
        let queued = start && tokio::runtime::Handle::try_current().is_ok() && self.submit(Job::Flush).is_ok();
        if start && !queued {
            let committer = self.committer.clone();
            let flush = crate::blocking(self.dir.display().to_string(), move || {
                committer.flush();
                Ok(())
            });
            drop(flush);
        }
        let path = self.dir.display().to_string();
        match failed {
            Some(e) => Box::pin(std::future::ready(Err(LogError::Io { path, source: std::io::Error::other(e) }))),
            None => Box::pin(settled(written, target, path)),
        }
    }

    fn committed_state(&self, consumer: &str) -> BoxFuture<'_, Result<Option<AckState>, LogError>> {
        let state = self.shared.lock().expect("log lock").consumers.get(consumer).map(|c| c.state.clone());
        Box::pin(std::future::ready(Ok(state)))
    }

    fn remove_consumer(&self, consumer: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let mut g = self.shared.lock().expect("log lock");
        g.pending.remove(consumer);
        let known = g.consumers.remove(consumer).is_some();
        drop(g);
        if !known {
            return Box::pin(std::future::ready(Ok(())));
        }
        let committer = self.committer.clone();
        let consumer = consumer.to_string();
        crate::blocking(self.dir.display().to_string(), move || committer.delete(&consumer))
    }
}

/// Resolves once the committer settled position `target` (or a later one):
/// `Ok` once written, the write's error if it failed, `Closed` if the log or
/// the consumer went away first.
async fn settled(mut written: watch::Receiver<Written>, target: u64, path: String) -> Result<(), LogError> {
    let failed_at = |w: &Written| w.1.as_ref().filter(|(seq, _)| *seq >= target).map(|(_, e)| e.clone());
    match written.wait_for(|w| w.0 >= target || failed_at(w).is_some()).await {
        Ok(w) if w.0 >= target => Ok(()),
        Ok(w) => Err(LogError::Io { path, source: std::io::Error::other(failed_at(&w).unwrap_or_default()) }),
        Err(_) => Err(LogError::Closed(path)),
    }
}

struct Writer {
    name: String,
    dir: PathBuf,
    config: FileLogConfig,
    shared: Arc<Mutex<Shared>>,
    committer: Committer,
    end_tx: watch::Sender<Offset>,
    next: Offset,
    buf: Vec<u8>,
    /// Rate limit for repeated write errors (a full disk fails every batch).
    errors: crate::Throttle,
    dirty: bool,
    last_sync: Instant,
    last_retention: Instant,
    /// The log was closed: no more housekeeping (its directory may be going).
    closed: bool,
}

impl Writer {
    /// Writes one batch taken from the inbox, then the consumer positions if
    /// asked, then any timed work that is due.
    fn handle(&mut self, batch: Vec<AppendReq>, flush: bool) {
        if !batch.is_empty() {
            self.write_batch(batch);
        }
        if flush {
            self.committer.flush();
        }
        self.housekeeping();
    }

    /// At close: syncs what an interval policy left unsynced; no more housekeeping.
    fn finish(&mut self) {
        if self.dirty {
            let g = self.shared.lock().expect("log lock");
            let _ = g.segments.last().expect("segment").file.sync_data();
            self.dirty = false;
        }
        self.closed = true;
    }

    fn housekeeping(&mut self) {
        if self.closed {
            return;
        }
        if let FsyncPolicy::Interval(d) = self.config.fsync
            && self.dirty
            && self.last_sync.elapsed() >= d
        {
            let file = self.shared.lock().expect("log lock").segments.last().expect("segment").file.clone();
            if let Err(e) = file.sync_data()
                && let Some(suppressed) = self.errors.allow()
            {
                tracing::error!(log = %self.name, error = %e, suppressed, "interval fsync failed");
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        if self.last_retention.elapsed() >= Duration::from_secs(1) {
            self.last_retention = Instant::now();
            self.apply_retention();
        }
    }

    fn write_batch(&mut self, batch: Vec<AppendReq>) {
        let ts = now_ms();
        self.buf.clear();
        let mut firsts = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        let (seg_file, seg_path, seg_size) = {
            let g = self.shared.lock().expect("log lock");
            let s = g.segments.last().expect("segment");
            (s.file.clone(), s.path.clone(), s.size)
        };
        let mut index_adds = Vec::new();
        let mut last_indexed = {
            let g = self.shared.lock().expect("log lock");
            g.segments.last().expect("segment").index.last().map_or(0, |(_, p)| *p)
        };
        let mut next = self.next;
        for req in &batch {
            firsts.push(next);
            for p in &req.payloads {
                let pos = seg_size + self.buf.len() as u64;
                if pos - last_indexed >= INDEX_EVERY {
                    index_adds.push((next, pos));
                    last_indexed = pos;
                }
                encode_frame(&mut self.buf, next, ts, p);
                records.push(Record { offset: next, timestamp_ms: ts, payload: p.clone() });
                next += 1;
            }
        }
        let result = (&*seg_file).write_all(&self.buf).and_then(|()| match self.config.fsync {
            FsyncPolicy::Always => seg_file.sync_data(),
            _ => Ok(()),
        });
        if let Err(e) = result {
            if let Some(suppressed) = self.errors.allow() {
                tracing::error!(log = %self.name, error = %e, suppressed, "append failed; truncating the partial write (repeats are logged once per 10 s)");
            }
            let _ = seg_file.set_len(seg_size);
            for req in batch {
                let _ = req.reply.send(Err(LogError::io(&seg_path, std::io::Error::new(e.kind(), e.to_string()))));
            }
            return;
        }
        self.dirty = !matches!(self.config.fsync, FsyncPolicy::Always);
        if !self.dirty {
            self.last_sync = Instant::now();
        }
        let written = self.buf.len() as u64;
        self.next = next;
        {
            let mut g = self.shared.lock().expect("log lock");
            let s = g.segments.last_mut().expect("segment");
            s.size += written;
            s.end = next;
            s.last_ts = ts;
            s.index.extend(index_adds);
            let budget = self.config.tail_cache_bytes;
            for r in records {
                g.cache_bytes += r.payload.len() + 32;
                g.cache.push_back(r);
            }
            while g.cache_bytes > budget && g.cache.len() > 1 {
                let r = g.cache.pop_front().expect("non-empty");
                g.cache_bytes -= r.payload.len() + 32;
            }
        }
        self.end_tx.send_replace(next);
        for (req, first) in batch.into_iter().zip(firsts) {
            let _ = req.reply.send(Ok(first));
        }
        if seg_size + written >= self.config.segment_bytes {
            self.roll();
        }
    }

    fn roll(&mut self) {
        let base = self.next;
        let path = seg_path(&self.dir, base, "log");
        let file = match open_rw(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(log = %self.name, error = %e, "cannot open a new segment; staying on the current one");
                return;
            }
        };
        let mut g = self.shared.lock().expect("log lock");
        let sealed = g.segments.last().expect("segment");
        if self.dirty {
            let _ = sealed.file.sync_data();
            self.dirty = false;
        }
        let _ = fs::write(seg_path(&self.dir, sealed.base, "idx"), encode_sealed_index(sealed));
        g.segments.push(Segment {
            base,
            end: base,
            size: 0,
            last_ts: 0,
            file: Arc::new(file),
            path,
            index: vec![(base, 0)],
        });
        drop(g);
        fsync_dir(&self.dir);
    }

    fn apply_retention(&mut self) {
        let r = self.config.retention;
        if r.max_age.is_none() && r.max_bytes.is_none() {
            return;
        }
        let mut g = self.shared.lock().expect("log lock");
        let min_committed = g.consumers.values().map(|c| c.state.committed).min().unwrap_or(Offset::MAX);
        let mut total: u64 = g.segments.iter().map(|s| s.size).sum();
        let now = now_ms();
        let mut removed = Vec::new();
        while g.segments.len() > 1 {
            let s = &g.segments[0];
            let consumed = s.end <= min_committed;
            let too_old = r.max_age.is_some_and(|a| now - s.last_ts >= a.as_millis() as i64);
            let too_big = r.max_bytes.is_some_and(|m| total > m);
            if !(consumed && (too_old || too_big)) {
                break;
            }
            let s = g.segments.remove(0);
            total -= s.size;
            removed.push(s);
        }
        drop(g);
        for s in removed {
            tracing::debug!(log = %self.name, segment = %s.path.display(), "retention removed segment");
            let _ = fs::remove_file(&s.path);
            let _ = fs::remove_file(seg_path(&self.dir, s.base, "idx"));
        }
    }
}

/// Opens file logs under one root directory, one subdirectory per log.
pub struct FileBackend {
    root: PathBuf,
    config: FileLogConfig,
    open: Mutex<HashMap<String, Arc<FileLog>>>,
    /// Serialises opening and removing, so one directory never has two writers.
    opening: tokio::sync::Mutex<()>,
}

impl FileBackend {
    pub fn new(root: impl Into<PathBuf>, config: FileLogConfig) -> Self {
        FileBackend {
            root: root.into(),
            config,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn dir_for(&self, name: &str) -> Result<PathBuf, LogError> {
        if name.is_empty()
            || name.starts_with('.')
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(LogError::InvalidName(name.to_string()));
        }
        Ok(self.root.join(name))
    }

    /// Closes every open log (at shutdown). Blocks: call it off the runtime.
    pub fn close_all(&self) {
        let logs: Vec<Arc<FileLog>> = self.open.lock().expect("backend lock").drain().map(|(_, l)| l).collect();
        for l in logs {
            l.close();
        }
    }
}

impl LogBackend for FileBackend {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn EventLog>, LogError>> {
        let name = name.to_string();
        Box::pin(async move {
            let dir = self.dir_for(&name)?;
            let _one = self.opening.lock().await;
            if let Some(l) = self.open.lock().expect("backend lock").get(&name) {
                return Ok(l.clone() as Arc<dyn EventLog>);
            }
            let (n, config) = (name.clone(), self.config.clone());
            let log = crate::blocking(dir.display().to_string(), move || FileLog::open(&n, &dir, config)).await?;
            self.open.lock().expect("backend lock").insert(name, log.clone());
            Ok(log as Arc<dyn EventLog>)
        })
    }

    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let name = name.to_string();
        Box::pin(async move {
            let dir = self.dir_for(&name)?;
            let _one = self.opening.lock().await;
            let log = self.open.lock().expect("backend lock").remove(&name);
            crate::blocking(dir.display().to_string(), move || {
                if let Some(l) = log {
                    l.close();
                }
                match fs::remove_dir_all(&dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(LogError::io(&dir, e)),
                }
            })
            .await
        })
    }
}
