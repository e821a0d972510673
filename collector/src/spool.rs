//! The durable local spool (`--spool-dir`): requests are acknowledged once their spans are fsync'd here, and a
//! drainer moves them to PostgreSQL in large batches.
//!
//! ```text
//!  request tasks ──append──▶ appender thread: one write + one fdatasync for every record waiting (group
//!        ▲                    commit), then each request is answered
//!        └──── ack ◀──────────┘     │ segment files (format.rs), a new one every `segment_bytes`
//!                                   ▼
//!                       drainer thread: reads the fsync'd records in order (at most `drain_bytes` of them in
//!                       memory) ──▶ the pipeline's writers (group commit, retried until PostgreSQL takes them)
//!                                   │ committed
//!                                   ▼
//!                       a segment is deleted once it is sealed and every record of it is committed
//! ```
//!
//! Segments left by an earlier run are drained first, alongside new appends, which always go to a new
//! segment numbered after every existing one: a replayed record and a new one never share a file, and the
//! order in which they reach PostgreSQL does not matter (readers deduplicate by span identity). A record whose
//! batch committed but whose segment was not yet deleted when the process died is written again at the next
//! start; reads show it once. RED metrics are counted when a record is acknowledged, never when it is
//! drained, so a replay does not count spans twice.

pub mod format;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tracepost_storage::EncodedSpans;

use crate::metrics::SpoolMetrics;
use crate::pipeline::Reservation;
use format::{FRAME_BYTES, HEADER_BYTES};

/// Where and how much to spool.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes of segment files at most; appends beyond it are refused with a retryable error.
    pub max_bytes: u64,
}

/// The spool is reported not ready (`/readyz`) once it is this full, so a load balancer sends elsewhere
/// before it refuses.
const NEAR_FULL_RATIO: f64 = 0.9;

/// A write (and its fsync) taking longer than this makes the spool not ready: its disk hangs.
const WRITE_STALLED_AFTER: Duration = Duration::from_secs(2);

/// Why an append was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full")]
    Full,
    /// The reason is for the log.
    #[error("spool cannot be written: {0}")]
    Unwritable(String),
    #[error("spool closed")]
    Closed,
}

/// A segment's size target: a new one is started once the current one holds this much, so drained data is
/// freed a segment at a time.
fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(256 << 10, 64 << 20)
}

/// The spool: cheap to clone; the appender and drainer threads hold it too.
#[derive(Clone, Debug)]
pub struct Spool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Wakes the appender (records waiting, or closing) and the drainer (records became durable).
    changed: Condvar,
    metrics: SpoolMetrics,
    /// Held for the life of the spool: one process per directory.
    _lock: File,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<Waiting>,
    waiting_bytes: u64,
    /// Bytes of the group the appender is writing, and since when (a disk that hangs shows here).
    writing_bytes: u64,
    writing_since: Option<std::time::Instant>,
    /// No more appends; the appender exits once it has written what is waiting.
    closed: bool,
    appender_done: bool,
    /// The drainer stops where it is (shutdown grace over, or the pipeline aborted).
    stopped: bool,
    segments: BTreeMap<u64, Segment>,
    /// Bytes of the segment files this spool drains (segments of a newer version, left alone, are not
    /// counted against `--spool-max-bytes`).
    disk_bytes: u64,
    /// Set while appends fail (a full disk), with the reason; cleared by the next append that works.
    write_failure: Option<String>,
    /// Records handed to the writers and not yet committed: read order → when appended (Unix ns).
    in_flight: BTreeMap<u64, i64>,
    next_read: u64,
}

#[derive(Debug)]
struct Waiting {
    record: BytesMut,
    spans: usize,
    done: oneshot::Sender<Result<(), SpoolError>>,
    /// The request's memory: released once the record is written, even if the request gave up waiting.
    _reservation: Reservation,
}

#[derive(Debug)]
struct Segment {
    /// Bytes that are durable (and, for a segment of an earlier run, the file's length).
    len: u64,
    /// No more appends: a segment of an earlier run, or one the appender moved on from.
    sealed: bool,
    /// Where the drainer has read to.
    read_to: u64,
    /// Records handed to the writers and not yet committed.
    outstanding: usize,
    /// Written by a newer tracepost: never read, never deleted.
    keep: bool,
}

impl Segment {
    /// Every record in it has been read and committed.
    fn all_committed(&self) -> bool {
        self.read_to >= self.len && self.outstanding == 0
    }

    /// No longer needed: sealed, all committed, and not left alone for a newer version.
    fn drained(&self) -> bool {
        self.sealed && self.all_committed() && !self.keep
    }
}

/// A record handed to the writers; tell the spool what became of it.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    segment: u64,
    read: u64,
    bytes: u64,
    spans: usize,
}

impl Ticket {
    /// The record's spans are committed in PostgreSQL.
    pub fn committed(self) {
        self.shared.metrics.drained_spans.inc_by(self.spans as u64);
        self.settle();
    }

    /// PostgreSQL refused the record's data for good: it is dropped, counted and logged.
    pub fn refused(self, reason: &str) {
        self.shared.metrics.dropped_spans.inc_by(self.spans as u64);
        tracing::error!(
            %reason,
            spans = self.spans,
            segment = %self.shared.dir.join(format::segment_name(self.segment)).display(),
            "PostgreSQL refused spooled spans; they are dropped"
        );
        self.settle();
    }

    fn settle(self) {
        self.shared.metrics.backlog_bytes.dec_by(self.bytes as i64);
        let mut state = self.shared.lock();
        state.in_flight.remove(&self.read);
        if let Some(segment) = state.segments.get_mut(&self.segment) {
            segment.outstanding -= 1;
        }
        self.shared.delete_if_drained(&mut state, self.segment);
    }
}

/// What the drainer hands the writers.
#[derive(Debug)]
pub struct Drained {
    pub spans: EncodedSpans,
    pub ticket: Ticket,
}

impl Spool {
    /// Opens (or creates) the spool directory, takes its lock, lists the segments an earlier run left (to be
    /// drained) and starts a new segment and the appender thread.
    pub fn open(config: &SpoolConfig, metrics: SpoolMetrics) -> io::Result<Self> {
        let named = |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", config.dir.display()));
        std::fs::create_dir_all(&config.dir).map_err(named)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.dir.join("lock"))
            .map_err(named)?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another tracepost process", config.dir.display()),
            )
        })?;
        let mut state = State::default();
        let mut backlog = 0u64;
        for entry in std::fs::read_dir(&config.dir).map_err(named)? {
            let entry = entry.map_err(named)?;
            let name = entry.file_name();
            let Some(sequence) = name.to_str().and_then(format::parse_segment_name) else {
                continue;
            };
            let metadata = entry.metadata().map_err(named)?;
            if !metadata.is_file() {
                tracing::warn!(path = %entry.path().display(), "not a file, ignored in the spool directory");
                continue;
            }
            let len = metadata.len();
            if len < HEADER_BYTES {
                // Created by a run that died before its header was durable: it never held a record.
                metrics.damaged_segments.inc();
                tracing::warn!(path = %entry.path().display(), len, "spool segment without a header, deleted");
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            state.disk_bytes += len;
            backlog += len.saturating_sub(HEADER_BYTES);
            state.segments.insert(
                sequence,
                Segment {
                    len,
                    sealed: true,
                    read_to: 0,
                    outstanding: 0,
                    keep: false,
                },
            );
        }
        if !state.segments.is_empty() {
            tracing::info!(
                segments = state.segments.len(),
                bytes = backlog,
                dir = %config.dir.display(),
                "spool holds spans from an earlier run; draining them to PostgreSQL"
            );
        }
        metrics.capacity_bytes.set(config.max_bytes as i64);
        metrics.backlog_bytes.set(backlog as i64);
        let next = match state.segments.keys().next_back() {
            None => 1,
            Some(last) => last.checked_add(1).ok_or_else(|| {
                io::Error::other(format!(
                    "{}: segment numbers are exhausted (a segment is named {last}); move the segments away",
                    config.dir.display()
                ))
            })?,
        };
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            segment_bytes: segment_bytes(config.max_bytes),
            state: Mutex::new(state),
            changed: Condvar::new(),
            metrics,
            _lock: lock,
        });
        // A full disk must not keep the process from starting (and draining what it holds): the first
        // segment is created when the first record comes, and retried while that fails.
        let appender = shared.clone();
        std::thread::Builder::new()
            .name("spool-append".into())
            .spawn(move || appender.run_appender(next))?;
        Ok(Self { shared })
    }

    /// Appends one request's spans and returns once they are durable (written and fsync'd, sharing the
    /// fsync with every request appended meanwhile).
    pub async fn append(&self, spans: &EncodedSpans, reservation: Reservation) -> Result<(), SpoolError> {
        let record = format::encode_record(spans, tracepost_storage::time::now_unix_nanos());
        let (done, durable) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(SpoolError::Closed);
            }
            let len = record.len() as u64;
            if state.disk_bytes + state.waiting_bytes + state.writing_bytes + len > self.shared.max_bytes {
                self.shared.metrics.refused("full");
                return Err(SpoolError::Full);
            }
            state.waiting_bytes += len;
            state.waiting.push(Waiting {
                record,
                spans: spans.span_count,
                done,
                _reservation: reservation,
            });
        }
        self.shared.changed.notify_all();
        durable.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Whether the spool takes appends: `Err` with the reason when it is nearly full or cannot be written.
    pub fn health(&self) -> Result<(), String> {
        let state = self.shared.lock();
        if let Some(failure) = &state.write_failure {
            return Err(format!("the spool cannot be written: {failure}"));
        }
        if let Some(since) = state
            .writing_since
            .filter(|since| since.elapsed() > WRITE_STALLED_AFTER)
        {
            return Err(format!(
                "the spool's disk has not finished a write for {:.1}s",
                since.elapsed().as_secs_f64()
            ));
        }
        let used = state.disk_bytes + state.waiting_bytes + state.writing_bytes;
        if used as f64 >= self.shared.max_bytes as f64 * NEAR_FULL_RATIO {
            return Err(format!(
                "the spool is {:.0}% full ({used} of {} bytes): PostgreSQL is slow or unreachable",
                100.0 * used as f64 / self.shared.max_bytes as f64,
                self.shared.max_bytes
            ));
        }
        Ok(())
    }

    /// Refreshes the age of the oldest span not yet in PostgreSQL.
    pub fn refresh_age(&self) {
        let state = self.shared.lock();
        let oldest = state.in_flight.values().min().copied();
        let backlog = self.shared.metrics.backlog_bytes.get();
        match oldest {
            Some(appended) => {
                let age = (tracepost_storage::time::now_unix_nanos() - appended).max(0) as f64 / 1e9;
                self.shared.metrics.oldest_unsent_seconds.set(age);
            }
            None if backlog <= 0 => {
                self.shared.metrics.oldest_unsent_seconds.set(0.0);
            }
            // Between two reads of a backlog: keep the last age.
            None => {}
        }
    }

    /// Stops appends: what is waiting is still written; the drainer then drains what is left and stops.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }

    /// Stops the drainer where it is (what it did not hand over stays in the spool for the next start).
    pub fn stop(&self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
    }

    /// Whether [`Spool::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().stopped
    }

    /// Record bytes not yet committed in PostgreSQL.
    pub fn backlog_bytes(&self) -> i64 {
        self.shared.metrics.backlog_bytes.get()
    }

    /// The next record to hand to the writers, waiting for one; `None` once the spool is closed and drained,
    /// or stopped. Call from one (blocking) thread only.
    pub fn next_record(&self, reader: &mut Reader) -> Option<Drained> {
        loop {
            let (segment, from, to) = self.shared.next_range()?;
            match reader.read(&self.shared, segment, from, to) {
                Some(drained) => return Some(drained),
                None => continue,
            }
        }
    }
}

/// The drainer's open segment.
#[derive(Debug, Default)]
pub struct Reader {
    file: Option<(u64, File)>,
}

impl Reader {
    /// Reads the record at `from` of `segment` (durable up to `to`) and hands it over, or, on damage, logs
    /// and counts it and skips the rest of the segment (`None`).
    fn read(&mut self, shared: &Arc<Shared>, segment: u64, from: u64, to: u64) -> Option<Drained> {
        let path = shared.dir.join(format::segment_name(segment));
        if self.file.as_ref().map(|(open, _)| *open) != Some(segment) {
            match File::open(&path) {
                Ok(file) => self.file = Some((segment, file)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    shared.damaged(segment, from, to, "the file is gone");
                    return None;
                }
                Err(error) => return transient(&path, &error),
            }
        }
        let file = &self.file.as_ref().expect("opened above").1;
        if from == 0 {
            let mut header = vec![0u8; HEADER_BYTES.min(to) as usize];
            let checked = file
                .read_exact_at(&mut header, 0)
                .map_err(|error| error.to_string())
                .and_then(|()| format::check_header(&header).map_err(|error| error.to_string()));
            match checked {
                Ok(_) => shared.advance(segment, HEADER_BYTES),
                Err(reason) if reason.contains("newer") => shared.keep(segment, &reason),
                Err(reason) => shared.damaged(segment, 0, to, &reason),
            }
            return None;
        }
        let damage = |reason: &str| {
            shared.damaged(segment, from, to, reason);
            None
        };
        if to - from < FRAME_BYTES {
            return damage("a record's frame is cut short");
        }
        let mut frame = [0u8; FRAME_BYTES as usize];
        if let Err(error) = file.read_exact_at(&mut frame, from) {
            return match error.kind() {
                io::ErrorKind::UnexpectedEof => damage("the file is shorter than it was"),
                _ => transient(&path, &error),
            };
        }
        let Some(frame) = format::parse_frame(frame) else {
            return damage("a record's length is impossible");
        };
        let end = from + FRAME_BYTES + frame.len;
        if end > to {
            return damage("a record is cut short");
        }
        let mut payload = vec![0u8; frame.len as usize];
        if let Err(error) = file.read_exact_at(&mut payload, from + FRAME_BYTES) {
            return match error.kind() {
                io::ErrorKind::UnexpectedEof => damage("the file is shorter than it was"),
                _ => transient(&path, &error),
            };
        }
        if !format::payload_intact(frame, &payload) {
            return damage("a record's checksum does not match");
        }
        match format::decode_record(Bytes::from(payload)) {
            Ok((spans, appended)) => Some(shared.hand_over(segment, end, end - from, spans, appended)),
            Err(error) => {
                // Intact but unusable by this version: skip this record only.
                shared.metrics.damaged_bytes.inc_by(end - from);
                shared.metrics.backlog_bytes.dec_by((end - from) as i64);
                tracing::error!(%error, segment = %path.display(), offset = from, "spool record skipped");
                shared.advance(segment, end);
                None
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format::segment_name(segment))
    }

    /// Creates a segment numbered `sequence` or, if a file already has that name, the next free number
    /// (header written and fsync'd, the directory entry too) and records it as active.
    fn create_segment(&self, mut sequence: u64) -> io::Result<ActiveSegment> {
        let (path, file) = loop {
            let path = self.path(sequence);
            match File::options().create_new(true).write(true).open(&path) {
                Ok(file) => break (path, file),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    sequence = sequence
                        .checked_add(1)
                        .ok_or_else(|| io::Error::other("segment numbers are exhausted"))?;
                }
                Err(error) => return Err(error),
            }
        };
        let created = file
            .write_all_at(&format::header(), 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir));
        if let Err(error) = created {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        let mut state = self.lock();
        state.disk_bytes += HEADER_BYTES;
        state.segments.insert(
            sequence,
            Segment {
                len: HEADER_BYTES,
                sealed: false,
                read_to: HEADER_BYTES,
                outstanding: 0,
                keep: false,
            },
        );
        self.metrics.disk_bytes.set(state.disk_bytes as i64);
        Ok(ActiveSegment {
            sequence,
            file,
            len: HEADER_BYTES,
        })
    }

    fn run_appender(self: Arc<Self>, first_sequence: u64) {
        let mut active: Option<ActiveSegment> = None;
        let mut next_sequence = first_sequence;
        loop {
            let group = {
                let mut state = self.lock();
                while state.waiting.is_empty() && !state.closed {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if state.waiting.is_empty() {
                    state.appender_done = true;
                    if let Some(active) = &active {
                        if let Some(segment) = state.segments.get_mut(&active.sequence) {
                            segment.sealed = true;
                        }
                        self.delete_if_drained(&mut state, active.sequence);
                    }
                    drop(state);
                    self.changed.notify_all();
                    return;
                }
                state.writing_bytes = std::mem::take(&mut state.waiting_bytes);
                state.writing_since = Some(std::time::Instant::now());
                std::mem::take(&mut state.waiting)
            };
            let outcome = self.write_group(&mut active, &mut next_sequence, &group);
            let mut state = self.lock();
            state.writing_bytes = 0;
            state.writing_since = None;
            match &outcome {
                Ok(()) => {
                    if state.write_failure.take().is_some() {
                        tracing::info!(dir = %self.dir.display(), "the spool is writable again");
                    }
                }
                Err(reason) => {
                    self.metrics.refused("write_error");
                    if state.write_failure.is_none() {
                        tracing::error!(
                            %reason,
                            dir = %self.dir.display(),
                            "the spool cannot be written: exports are refused (retryable) until it can"
                        );
                    }
                    state.write_failure = Some(reason.clone());
                }
            }
            drop(state);
            self.changed.notify_all();
            for waiting in group {
                let _ = waiting.done.send(outcome.clone().map_err(SpoolError::Unwritable));
            }
        }
    }

    /// Makes room in the active segment for `bytes`: a segment whose records are all committed is emptied
    /// in place (no new file needed, so this works on a full disk too), a full one is sealed for a new one.
    fn prepare_segment(
        &self,
        active: &mut Option<ActiveSegment>,
        next_sequence: &mut u64,
        bytes: u64,
    ) -> io::Result<()> {
        if let Some(segment) = active.as_mut() {
            let mut state = self.lock();
            let drained = state
                .segments
                .get(&segment.sequence)
                .is_some_and(Segment::all_committed);
            let worth_it = segment.len + bytes > self.segment_bytes
                || segment.len >= self.segment_bytes / 4
                || state.write_failure.is_some();
            if drained && segment.len > HEADER_BYTES && worth_it {
                // Nothing in it is needed any more: cut it back to its header, under the lock so the drainer
                // never reads between the cut and the next write.
                segment.file.set_len(HEADER_BYTES)?;
                state.disk_bytes = state.disk_bytes.saturating_sub(segment.len - HEADER_BYTES);
                self.metrics.disk_bytes.set(state.disk_bytes as i64);
                if let Some(state) = state.segments.get_mut(&segment.sequence) {
                    state.len = HEADER_BYTES;
                    state.read_to = HEADER_BYTES;
                }
                segment.len = HEADER_BYTES;
            }
        }
        let full = active
            .as_ref()
            .is_some_and(|segment| segment.len > HEADER_BYTES && segment.len + bytes > self.segment_bytes);
        if active.is_none() || full {
            let next = self.create_segment(*next_sequence)?;
            *next_sequence = next.sequence + 1;
            if let Some(previous) = active.replace(next) {
                let mut state = self.lock();
                if let Some(segment) = state.segments.get_mut(&previous.sequence) {
                    segment.sealed = true;
                }
                self.delete_if_drained(&mut state, previous.sequence);
            }
        }
        Ok(())
    }

    /// Writes a group of records with one write and one fdatasync. On failure nothing of the group counts
    /// as written (the file is cut back to its last whole record).
    fn write_group(
        &self,
        active: &mut Option<ActiveSegment>,
        next_sequence: &mut u64,
        group: &[Waiting],
    ) -> Result<(), String> {
        let bytes: usize = group.iter().map(|waiting| waiting.record.len()).sum();
        self.prepare_segment(active, next_sequence, bytes as u64)
            .map_err(|error| error.to_string())?;
        let segment = active.as_mut().expect("prepared above");
        let mut buffer = Vec::with_capacity(bytes);
        for waiting in group {
            buffer.extend_from_slice(&waiting.record);
        }
        let written = segment
            .file
            .write_all_at(&buffer, segment.len)
            .and_then(|()| segment.file.sync_data());
        if let Err(error) = written {
            let _ = segment.file.set_len(segment.len);
            return Err(error.to_string());
        }
        segment.len += bytes as u64;
        let spans: usize = group.iter().map(|waiting| waiting.spans).sum();
        self.metrics.fsyncs.inc();
        self.metrics.appended_spans.inc_by(spans as u64);
        self.metrics.backlog_bytes.inc_by(bytes as i64);
        let mut state = self.lock();
        state.disk_bytes += bytes as u64;
        self.metrics.disk_bytes.set(state.disk_bytes as i64);
        if let Some(state) = state.segments.get_mut(&segment.sequence) {
            state.len = segment.len;
        }
        Ok(())
    }

    /// The next durable range to read, waiting for one: `None` once closed and everything is read, or
    /// stopped.
    fn next_range(&self) -> Option<(u64, u64, u64)> {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return None;
            }
            let next = state
                .segments
                .iter()
                .find(|(_, segment)| segment.read_to < segment.len && !segment.keep)
                .map(|(sequence, segment)| (*sequence, segment.read_to, segment.len));
            if next.is_some() {
                return next;
            }
            if state.appender_done {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn advance(&self, segment: u64, to: u64) {
        let mut state = self.lock();
        if let Some(state) = state.segments.get_mut(&segment) {
            state.read_to = to;
        }
        self.delete_if_drained(&mut state, segment);
    }

    fn hand_over(self: &Arc<Self>, segment: u64, end: u64, bytes: u64, spans: EncodedSpans, appended: i64) -> Drained {
        let mut state = self.lock();
        let read = state.next_read;
        state.next_read += 1;
        state.in_flight.insert(read, appended);
        if let Some(state) = state.segments.get_mut(&segment) {
            state.read_to = end;
            state.outstanding += 1;
        }
        let ticket = Ticket {
            shared: Arc::clone(self),
            segment,
            read,
            bytes,
            spans: spans.span_count,
        };
        Drained { spans, ticket }
    }

    /// The rest of a segment cannot be read: count and log it once, and skip it.
    fn damaged(&self, segment: u64, from: u64, to: u64, reason: &str) {
        let bytes = to.saturating_sub(from);
        self.metrics.damaged_segments.inc();
        self.metrics.damaged_bytes.inc_by(bytes);
        self.metrics
            .backlog_bytes
            .dec_by(bytes.min(to.saturating_sub(HEADER_BYTES)) as i64);
        tracing::error!(
            segment = %self.path(segment).display(),
            offset = from,
            bytes,
            %reason,
            "spool segment damaged: its intact records before this offset are kept, the rest is skipped"
        );
        self.advance(segment, to);
    }

    /// A segment written by a newer version: left alone (a downgrade must not destroy it).
    fn keep(&self, segment: u64, reason: &str) {
        tracing::error!(
            segment = %self.path(segment).display(),
            %reason,
            "spool segment left as it is (and not counted against --spool-max-bytes); move it to a newer tracepost"
        );
        let mut state = self.lock();
        let Some(kept) = state.segments.get_mut(&segment) else {
            return;
        };
        kept.keep = true;
        let len = kept.len;
        self.metrics
            .backlog_bytes
            .dec_by(len.saturating_sub(HEADER_BYTES) as i64);
        state.disk_bytes = state.disk_bytes.saturating_sub(len);
        self.metrics.disk_bytes.set(state.disk_bytes as i64);
    }

    fn delete_if_drained(&self, state: &mut State, sequence: u64) {
        if !state.segments.get(&sequence).is_some_and(Segment::drained) {
            return;
        }
        let segment = state.segments.remove(&sequence).expect("checked above");
        match std::fs::remove_file(self.path(sequence)) {
            Ok(()) => {
                state.disk_bytes = state.disk_bytes.saturating_sub(segment.len);
                self.metrics.disk_bytes.set(state.disk_bytes as i64);
            }
            Err(error) => {
                tracing::warn!(%error, segment = %self.path(sequence).display(), "drained spool segment not deleted")
            }
        }
    }
}

/// A read that failed for a reason that may pass (out of file descriptors, an I/O error): logged, and the
/// same record is read again a second later; nothing is skipped.
fn transient(path: &Path, error: &io::Error) -> Option<Drained> {
    tracing::warn!(%error, segment = %path.display(), "reading the spool failed, retrying in 1s");
    std::thread::sleep(Duration::from_secs(1));
    None
}

/// The segment the appender writes to.
#[derive(Debug)]
struct ActiveSegment {
    sequence: u64,
    file: File,
    len: u64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
