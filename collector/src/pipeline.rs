//! The bounded ingest pipeline: admission → batcher → writers → acknowledgement.
//!
//! ```text
//!  request task ──convert+encode──▶ admission (semaphore on encoded bytes, waits at most `admission_wait`)
//!        │                              │
//!        │ awaits its oneshot           ▼
//!        │                      batcher task (flush on max spans, max bytes or max age)
//!        │                              │ bounded channel of batches
//!        │                              ▼
//!        └────────── ack ◀──── writer tasks (one COPY + COMMIT per batch, bounded retries)
//! ```
//!
//! A request is acknowledged only after the transaction holding its spans has committed. The memory a request
//! costs is reserved from one [`MemoryBudget`] (`max_inflight_bytes`) from its first byte: the receivers
//! reserve the body as it arrives and its decompression and decoding before they run, the reservation shrinks
//! to the encoded rows after conversion and travels with them until they are committed or failed. So the
//! memory all requests hold together never exceeds `max_inflight_bytes`.
//!
//! Every request carries a deadline (`export_timeout` after its first byte). A writer refuses requests whose
//! deadline has passed before it writes them, bounds each transaction by the earliest deadline of its batch
//! (`statement_timeout` / `lock_timeout` set locally, so PostgreSQL itself aborts a statement that waits), and
//! a refused request is therefore never committed later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracepost_storage::{EncodedSpans, SpanWriter};

use crate::metrics::CollectorMetrics;

/// Pipeline limits. Every one is a named setting of the binary.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Encoded span bytes admitted and not yet committed, at most.
    pub max_inflight_bytes: usize,
    /// How long a request may wait for admission before it is refused as overloaded.
    pub admission_wait: Duration,
    /// A batch is flushed when it holds this many spans...
    pub batch_max_spans: usize,
    /// ...or this many encoded bytes...
    pub batch_max_bytes: usize,
    /// ...or when its first request has waited this long.
    pub batch_max_age: Duration,
    /// Concurrent writer tasks (each holds one PostgreSQL connection while writing).
    pub writers: usize,
    /// How long a writer keeps retrying a failed batch before its requests get a retryable error. Shorter than
    /// the 10 s timeout OTLP clients use by default.
    pub retry_budget: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_inflight_bytes: 64 << 20,
            admission_wait: Duration::from_secs(1),
            batch_max_spans: 8192,
            batch_max_bytes: 8 << 20,
            batch_max_age: Duration::from_millis(100),
            writers: 2,
            retry_budget: Duration::from_secs(5),
        }
    }
}

/// Why spans were not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("server overloaded: spans in flight exceed the admission limit, retry later")]
    Overloaded,
    /// The reason is for the log; clients are told only that storage is unavailable.
    #[error("storage unavailable, retry later")]
    Unavailable(String),
    /// The reason is for the log; clients are told only that storage refused the request's data.
    #[error("storage refused the request's spans")]
    Refused(String),
    #[error("server is shutting down")]
    ShuttingDown,
}

impl IngestError {
    /// The metric label for this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) => "storage_unavailable",
            Self::Refused(_) => "storage_refused",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// Whether a client should retry the same request.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

struct Item {
    spans: EncodedSpans,
    ack: oneshot::Sender<Result<(), IngestError>>,
    _reservation: Reservation,
    bytes: usize,
    /// The request must be answered by then: past it, it is refused rather than written.
    deadline: Instant,
}

/// The handle request handlers submit spans through. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    sender: Arc<Mutex<Option<mpsc::Sender<Item>>>>,
    budget: MemoryBudget,
    config: PipelineConfig,
    metrics: CollectorMetrics,
    health: Arc<WriteHealth>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The pipeline's tasks; `join` waits until everything submitted has been committed or failed.
#[derive(Debug)]
pub struct PipelineTasks {
    batcher: JoinHandle<()>,
    writers: Vec<JoinHandle<()>>,
}

impl PipelineTasks {
    /// Waits for the batcher to flush and the writers to finish (after [`Pipeline::close`]).
    pub async fn join(&mut self) {
        let _ = (&mut self.batcher).await;
        for writer in &mut self.writers {
            let _ = writer.await;
        }
    }

    /// Stops the tasks where they are: a batch being written is rolled back, as when the process exits.
    pub fn abort(&self) {
        self.batcher.abort();
        for writer in &self.writers {
            writer.abort();
        }
    }
}

/// How long past a request's deadline `submit` waits for the writer's answer before giving up on it.
const ACK_BACKSTOP: Duration = Duration::from_millis(1500);

/// Admission is counted in KiB so that the semaphore's `u32` permits cover any sensible limit.
const PERMIT_BYTES: usize = 1024;

/// The memory all requests in flight may hold together: body, decompressed body, decoding and encoded rows.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    permits: u32,
    wait: Duration,
}

/// Memory reserved from a [`MemoryBudget`]; released when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    fn permits(&self) -> usize {
        self.permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    /// Gives back what is reserved beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(PERMIT_BYTES).max(1);
        if let Some(permit) = &mut self.permit {
            if permit.num_permits() > keep {
                drop(permit.split(permit.num_permits() - keep));
            }
        }
    }
}

/// Why memory could not be reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// More than the whole budget: the request can never fit.
    TooLarge,
    /// The budget stayed full for the admission wait (or past the request's deadline).
    Overloaded,
    ShuttingDown,
}

impl MemoryBudget {
    /// A budget of `bytes`; a reservation waits at most `wait` for room.
    pub fn new(bytes: usize, wait: Duration) -> Self {
        let permits = u32::try_from(bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX >> 3);
        Self {
            semaphore: Arc::new(Semaphore::new(permits as usize)),
            permits,
            wait,
        }
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> usize {
        self.permits as usize * PERMIT_BYTES
    }

    /// Grows `reservation` to hold at least `bytes`, waiting at most the admission wait (and never past
    /// `deadline`).
    pub async fn reserve(
        &self,
        reservation: &mut Reservation,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), BudgetError> {
        let wanted = bytes.div_ceil(PERMIT_BYTES);
        let missing = wanted.saturating_sub(reservation.permits());
        if missing == 0 {
            return Ok(());
        }
        if wanted > self.permits as usize {
            return Err(BudgetError::TooLarge);
        }
        let missing = missing as u32;
        let permit = match self.semaphore.clone().try_acquire_many_owned(missing) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(BudgetError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let until = deadline.min(Instant::now() + self.wait);
                tokio::time::timeout_at(until, self.semaphore.clone().acquire_many_owned(missing))
                    .await
                    .map_err(|_| BudgetError::Overloaded)?
                    .map_err(|_| BudgetError::ShuttingDown)?
            }
        };
        reservation.add(permit);
        Ok(())
    }

    /// [`MemoryBudget::reserve`] from a blocking-pool thread (decompression and decoding run there).
    pub fn reserve_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        reservation: &mut Reservation,
        bytes: usize,
        deadline: Instant,
    ) -> Result<(), BudgetError> {
        if bytes.div_ceil(PERMIT_BYTES) <= reservation.permits() {
            return Ok(());
        }
        runtime.block_on(self.reserve(reservation, bytes, deadline))
    }
}

impl Pipeline {
    /// Starts the batcher and writer tasks.
    pub fn start(config: PipelineConfig, writer: Arc<SpanWriter>, metrics: CollectorMetrics) -> (Self, PipelineTasks) {
        let health = Arc::new(WriteHealth::default());
        let (item_sender, item_receiver) = mpsc::channel(1024);
        let (batch_sender, batch_receiver) = mpsc::channel::<Vec<Item>>(config.writers.max(1));
        let batch_receiver = Arc::new(tokio::sync::Mutex::new(batch_receiver));
        let batcher = tokio::spawn(run_batcher(config.clone(), item_receiver, batch_sender));
        let writers = (0..config.writers.max(1))
            .map(|_| {
                tokio::spawn(run_writer(
                    config.retry_budget,
                    batch_receiver.clone(),
                    writer.clone(),
                    metrics.clone(),
                    health.clone(),
                ))
            })
            .collect();
        let pipeline = Self {
            sender: Arc::new(Mutex::new(Some(item_sender))),
            budget: MemoryBudget::new(config.max_inflight_bytes, config.admission_wait),
            config,
            metrics,
            health,
        };
        (pipeline, PipelineTasks { batcher, writers })
    }

    /// How long a request waits for room before it is refused as overloaded.
    pub fn admission_wait(&self) -> Duration {
        self.config.admission_wait
    }

    /// The memory budget requests reserve from (the same one the pipeline holds their rows against).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Whether the database took writes lately: `Err` with the reason when the last attempt failed or a
    /// write has been waiting on PostgreSQL longer than `stalled_after`.
    pub fn write_health(&self, stalled_after: Duration) -> Result<(), String> {
        self.health.check(stalled_after, FAILURE_MEMORY)
    }

    /// Submits one request's spans and waits until they are committed. `reservation` is the memory the
    /// request holds; it is resized to the encoded rows and released once they are committed or failed.
    pub async fn submit(
        &self,
        spans: EncodedSpans,
        mut reservation: Reservation,
        deadline: Instant,
    ) -> Result<(), IngestError> {
        if spans.span_count == 0 {
            return Ok(());
        }
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let sender = sender.ok_or(IngestError::ShuttingDown)?;
        let bytes = spans.rows.len()
            + spans.operation_index.len()
            + spans.resources.iter().map(|row| row.body.len()).sum::<usize>();
        let held = bytes.min(self.budget.total_bytes());
        reservation.shrink_to(held);
        self.budget
            .reserve(&mut reservation, held, deadline)
            .await
            .map_err(|error| match error {
                BudgetError::ShuttingDown => IngestError::ShuttingDown,
                BudgetError::TooLarge | BudgetError::Overloaded => IngestError::Overloaded,
            })?;
        let span_count = spans.span_count as i64;
        let (ack, acknowledged) = oneshot::channel();
        self.metrics.pending_spans.inc_by(span_count);
        self.metrics.inflight_bytes.inc_by(bytes as i64);
        let item = Item {
            spans,
            ack,
            _reservation: reservation,
            bytes,
            deadline,
        };
        match tokio::time::timeout_at(deadline, sender.send(item)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                // Not queued: nothing of it can be written later.
                self.metrics.pending_spans.dec_by(span_count);
                self.metrics.inflight_bytes.dec_by(bytes as i64);
                return Err(match sender.is_closed() {
                    true => IngestError::ShuttingDown,
                    false => IngestError::Unavailable("storage too slow: the write queue stayed full".into()),
                });
            }
        }
        // The writer answers by the deadline (it refuses what it cannot start in time, and PostgreSQL's own
        // timeouts end what it started); this wait is only a backstop.
        match tokio::time::timeout_at(deadline + ACK_BACKSTOP, acknowledged).await {
            Ok(outcome) => outcome.unwrap_or_else(|_| Err(IngestError::Unavailable("writer stopped".into()))),
            Err(_) => Err(IngestError::Unavailable("storage did not answer in time".into())),
        }
    }

    /// Stops taking new spans. What was submitted before is still written; see [`PipelineTasks::join`].
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }

    /// Spans admitted and not yet committed or failed.
    pub fn pending_spans(&self) -> i64 {
        self.metrics.pending_spans.get()
    }

    /// Spans whose batch could not be committed, since start.
    pub fn failed_spans(&self) -> u64 {
        self.metrics.spans_failed.get()
    }
}

async fn run_batcher(config: PipelineConfig, mut items: mpsc::Receiver<Item>, batches: mpsc::Sender<Vec<Item>>) {
    let mut pending: Vec<Item> = Vec::new();
    let mut pending_spans = 0usize;
    let mut pending_bytes = 0usize;
    let mut deadline = Instant::now();
    loop {
        let next = tokio::select! {
            item = items.recv() => item,
            () = tokio::time::sleep_until(deadline), if !pending.is_empty() => {
                pending_spans = 0;
                pending_bytes = 0;
                if batches.send(std::mem::take(&mut pending)).await.is_err() { return; }
                continue;
            }
        };
        let Some(item) = next else { break };
        if pending.is_empty() {
            deadline = Instant::now() + config.batch_max_age;
        }
        pending_spans += item.spans.span_count;
        pending_bytes += item.bytes;
        pending.push(item);
        if pending_spans >= config.batch_max_spans || pending_bytes >= config.batch_max_bytes {
            pending_spans = 0;
            pending_bytes = 0;
            if batches.send(std::mem::take(&mut pending)).await.is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = batches.send(pending).await;
    }
}

/// A request needs at least this much time left for a writer to start writing it; with less it is refused
/// (not written), so a request is never committed after its client was told it failed.
const MIN_WRITE_TIME: Duration = Duration::from_millis(100);

async fn run_writer(
    retry_budget: Duration,
    batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<Item>>>>,
    writer: Arc<SpanWriter>,
    metrics: CollectorMetrics,
    health: Arc<WriteHealth>,
) {
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(batch) = batch else { return };
        let now = Instant::now();
        let (batch, expired): (Vec<Item>, Vec<Item>) =
            batch.into_iter().partition(|item| item.deadline > now + MIN_WRITE_TIME);
        if !expired.is_empty() {
            metrics.requests_expired.inc_by(expired.len() as u64);
            finish(
                expired,
                Err(IngestError::Unavailable(
                    "storage too slow: not written within the request's deadline".into(),
                )),
                &metrics,
            );
        }
        let Some(deadline) = batch.iter().map(|item| item.deadline).min() else {
            continue;
        };
        let deadline = deadline.min(now + retry_budget);
        let parts: Vec<&EncodedSpans> = batch.iter().map(|item| &item.spans).collect();
        let outcome = write_with_retry(&writer, &parts, deadline, &metrics, &health).await;
        match outcome {
            Err(IngestError::Refused(reason)) if batch.len() > 1 => {
                // One request's data was refused: write each request alone so the others still land.
                tracing::warn!(%reason, requests = batch.len(), "batch refused, writing its requests one by one");
                for item in batch {
                    let outcome = write_with_retry(&writer, &[&item.spans], deadline, &metrics, &health).await;
                    finish(vec![item], outcome, &metrics);
                }
            }
            outcome => finish(batch, outcome, &metrics),
        }
    }
}

fn finish(batch: Vec<Item>, outcome: Result<(), IngestError>, metrics: &CollectorMetrics) {
    let spans: usize = batch.iter().map(|item| item.spans.span_count).sum();
    match &outcome {
        Ok(()) => {
            metrics.spans_committed.inc_by(spans as u64);
            metrics.batches_committed.inc();
            metrics.batch_spans.observe(spans as f64);
        }
        Err(error) => {
            metrics.batch_write_failures.inc();
            metrics.spans_failed.inc_by(spans as u64);
            tracing::error!(?error, spans, "batch not written, its requests get an error");
        }
    }
    for item in batch {
        metrics.pending_spans.dec_by(item.spans.span_count as i64);
        metrics.inflight_bytes.dec_by(item.bytes as i64);
        let _ = item.ack.send(outcome.clone());
    }
}

async fn write_with_retry(
    writer: &SpanWriter,
    parts: &[&EncodedSpans],
    deadline: Instant,
    metrics: &CollectorMetrics,
    health: &WriteHealth,
) -> Result<(), IngestError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let attempt = health.begin();
        let result = writer.write(parts, deadline.saturating_duration_since(started)).await;
        health.end(attempt, result.as_ref().err());
        let error = match result {
            Ok(()) => {
                metrics.batch_write_seconds.observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(error) => error,
        };
        if error.is_data_error() {
            return Err(IngestError::Refused(error.to_string()));
        }
        if matches!(error, tracepost_storage::StorageError::Unanswered) {
            metrics.batch_outcome_unknown.inc();
            tracing::error!("PostgreSQL did not answer COMMIT; the batch may be stored (a retry is then read once)");
            return Err(IngestError::Unavailable(error.to_string()));
        }
        if Instant::now() + backoff + MIN_WRITE_TIME >= deadline {
            return Err(IngestError::Unavailable(error.to_string()));
        }
        metrics.batch_write_retries.inc();
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "batch write failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// What `/readyz` knows of the writes: which are waiting on PostgreSQL since when, and whether the last one
/// failed.
#[derive(Debug, Default)]
struct WriteHealth {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    next: u64,
    active: Vec<(u64, Instant)>,
    /// When the last write failed, if no write has succeeded since.
    last_failure: Option<Instant>,
}

/// A failed write makes `/readyz` fail for this long (unless a write succeeds sooner): long enough to take a
/// collector whose database is gone out of rotation, short enough that an idle one comes back by itself.
const FAILURE_MEMORY: Duration = Duration::from_secs(10);

impl WriteHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin(&self) -> u64 {
        let mut state = self.lock();
        state.next += 1;
        let id = state.next;
        state.active.push((id, Instant::now()));
        id
    }

    fn end(&self, id: u64, error: Option<&tracepost_storage::StorageError>) {
        let mut state = self.lock();
        state.active.retain(|(active, _)| *active != id);
        // A refused value is the data's fault, not the database's.
        match error {
            None => state.last_failure = None,
            Some(error) if !error.is_data_error() => state.last_failure = Some(Instant::now()),
            Some(_) => {}
        }
    }

    fn check(&self, stalled_after: Duration, failure_memory: Duration) -> Result<(), String> {
        let state = self.lock();
        if let Some((_, since)) = state.active.iter().min_by_key(|(_, since)| *since) {
            let waited = since.elapsed();
            if waited > stalled_after {
                return Err(format!("a write has waited {:.1}s on PostgreSQL", waited.as_secs_f64()));
            }
        }
        if state.last_failure.is_some_and(|at| at.elapsed() < failure_memory) {
            return Err("the last write to PostgreSQL failed (see the log)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> tracepost_storage::StorageError {
        tracepost_storage::StorageError::Pool("connection refused".into())
    }

    /// The report: one failed write kept `/readyz` at 503 until a write succeeded, which never happens to a
    /// collector taken out of rotation. A failure now counts for a while, then readiness comes back by itself.
    #[test]
    fn a_failed_write_fails_readiness_for_a_while_not_forever() {
        let health = WriteHealth::default();
        let attempt = health.begin();
        health.end(attempt, Some(&unreachable()));
        assert!(health.check(Duration::from_secs(2), Duration::from_secs(60)).is_err());
        assert!(health.check(Duration::from_secs(2), Duration::ZERO).is_ok());
        let attempt = health.begin();
        health.end(attempt, None);
        assert!(health.check(Duration::from_secs(2), Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_write_waiting_on_the_database_fails_readiness_once_it_has_waited_too_long() {
        let health = WriteHealth::default();
        let _attempt = health.begin();
        assert!(health.check(Duration::from_secs(60), Duration::from_secs(60)).is_ok());
        let error = health
            .check(Duration::ZERO, Duration::from_secs(60))
            .expect_err("stalled");
        assert!(error.contains("waited"), "{error}");
    }
}
