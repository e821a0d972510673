//! The bounded ingest pipeline: admission → queue → writers (group commit) → acknowledgement, with an
//! optional durable spool in between.
//!
//! ```text
//!  without a spool:
//!  request task ──convert+encode──▶ memory budget ──▶ queue ──▶ writer tasks (--writers): a free writer takes
//!        ▲                                                      everything waiting, up to the batch caps, and
//!        └──────────────────────── ack after COMMIT ◀───────── writes it in one transaction now
//!
//!  with --spool-dir:
//!  request task ──▶ Spool::append (one fsync for all appends waiting) ──▶ ack
//!                   spool drainer thread ──▶ queue ──▶ writer tasks (retried until PostgreSQL takes them)
//!                                                            └──▶ committed: the spool frees the segment
//! ```
//!
//! Group commit: no timer. A writer that is free takes whatever is waiting and writes it at once; while the
//! writers are busy, requests accumulate and go together in the next transaction, so batches grow with the
//! load (up to `batch_max_spans` / `batch_max_bytes`) and an idle pipeline adds no delay.
//!
//! Without a spool a request is acknowledged only after the transaction holding its spans has committed; with
//! one, once its record is fsync'd in the spool. The memory a request costs is reserved from one
//! [`MemoryBudget`] (`max_inflight_bytes`) from its first byte: the receivers reserve the body as it arrives
//! and its decompression and decoding before they run, the reservation shrinks to the encoded rows after
//! conversion and travels with them until they are committed (or spooled) or failed. So the memory all
//! requests hold together never exceeds `max_inflight_bytes`. The spool drainer holds at most
//! `4 × batch_max_bytes` of records read back, from a budget of its own.
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
use tracepost_storage::{EncodedSpans, PostgresWriter};

use crate::metrics::CollectorMetrics;
use crate::spool::{Drained, Reader, Spool, SpoolConfig, SpoolError, Ticket};

/// Pipeline limits. Every one is a named setting of the binary.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Encoded span bytes admitted and not yet committed, at most.
    pub max_inflight_bytes: usize,
    /// How long a request may wait for admission before it is refused as overloaded.
    pub admission_wait: Duration,
    /// A writer takes at most this many spans into one transaction...
    pub batch_max_spans: usize,
    /// ...and at most this many encoded bytes (a single larger request still goes alone).
    pub batch_max_bytes: usize,
    /// Concurrent writer tasks (each holds one PostgreSQL connection while writing).
    pub writers: usize,
    /// How long a writer keeps retrying a failed batch before its requests get a retryable error. Shorter than
    /// the 10 s timeout OTLP clients use by default. (Spooled spans are retried until they are committed.)
    pub retry_budget: Duration,
    /// Acknowledge once durable in this spool instead of once committed.
    pub spool: Option<SpoolConfig>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_inflight_bytes: 64 << 20,
            admission_wait: Duration::from_secs(1),
            batch_max_spans: 8192,
            batch_max_bytes: 8 << 20,
            writers: 2,
            retry_budget: Duration::from_secs(5),
            spool: None,
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
    #[error("local spool full (PostgreSQL is not taking spans as fast as they come), retry later")]
    SpoolFull,
    /// The reason is for the log; clients are told only that the spool cannot be written.
    #[error("local spool cannot be written, retry later")]
    SpoolUnwritable(String),
}

impl IngestError {
    /// The metric label for this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Unavailable(_) => "storage_unavailable",
            Self::Refused(_) => "storage_refused",
            Self::ShuttingDown => "shutting_down",
            Self::SpoolFull => "spool_full",
            Self::SpoolUnwritable(_) => "spool_unwritable",
        }
    }

    /// Whether a client should retry the same request.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

struct Item {
    spans: EncodedSpans,
    completion: Completion,
    _reservation: Reservation,
    bytes: usize,
}

/// Who learns the outcome of an item's write.
enum Completion {
    /// A client waits for the commit; past the deadline it is refused rather than written.
    Client {
        ack: oneshot::Sender<Result<(), IngestError>>,
        deadline: Instant,
    },
    /// Spooled spans (the client was answered when they were fsync'd): the spool frees them once committed.
    Spooled(Ticket),
}

impl Item {
    fn deadline(&self) -> Option<Instant> {
        match &self.completion {
            Completion::Client { deadline, .. } => Some(*deadline),
            Completion::Spooled(_) => None,
        }
    }
}

/// The handle request handlers submit spans through. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    sender: Arc<Mutex<Option<mpsc::Sender<Item>>>>,
    budget: MemoryBudget,
    config: PipelineConfig,
    metrics: CollectorMetrics,
    health: Arc<WriteHealth>,
    spool: Option<Spool>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The pipeline's tasks; `join` waits until everything submitted has been committed or failed (and, with a
/// spool, until the spool is drained).
#[derive(Debug)]
pub struct PipelineTasks {
    writers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    drainer: Option<oneshot::Receiver<()>>,
    spool: Option<Spool>,
}

impl PipelineTasks {
    /// Waits for the spool to drain (if there is one) and the writers to finish (after [`Pipeline::close`]).
    pub async fn join(&mut self) {
        if let Some(drainer) = &mut self.drainer {
            let _ = drainer.await;
        }
        for writer in &mut self.writers {
            let _ = writer.await;
        }
    }

    /// Stops the tasks where they are: a batch being written is rolled back, as when the process exits;
    /// spooled spans not yet committed stay in the spool for the next start.
    pub fn abort(&self) {
        if let Some(spool) = &self.spool {
            spool.stop();
        }
        for task in self.writers.iter().chain(&self.background) {
            task.abort();
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
    /// Starts the writer tasks and, with a spool, opens it (draining what an earlier run left) and starts
    /// its drainer. Fails only if the spool cannot be opened.
    pub fn start(
        config: PipelineConfig,
        writer: Arc<PostgresWriter>,
        metrics: CollectorMetrics,
    ) -> std::io::Result<(Self, PipelineTasks)> {
        let health = Arc::new(WriteHealth::default());
        let (item_sender, item_receiver) = mpsc::channel(QUEUE_ITEMS);
        let queue = Arc::new(tokio::sync::Mutex::new(Queue {
            receiver: item_receiver,
            carry: None,
        }));
        let spool = config
            .spool
            .as_ref()
            .map(|spool| Spool::open(spool, metrics.spool.clone()))
            .transpose()?;
        let mut background = Vec::new();
        let mut drainer = None;
        if let Some(spool) = &spool {
            let (done, finished) = oneshot::channel();
            let budget = MemoryBudget::new(config.batch_max_bytes.saturating_mul(4), Duration::from_secs(1));
            let (spool_for_thread, sender, runtime) =
                (spool.clone(), item_sender.clone(), tokio::runtime::Handle::current());
            std::thread::Builder::new().name("spool-drain".into()).spawn(move || {
                run_drainer(&spool_for_thread, &sender, &budget, &runtime);
                let _ = done.send(());
            })?;
            drainer = Some(finished);
            let spool = spool.clone();
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    spool.refresh_age();
                }
            }));
        }
        let warm = writer.clone();
        let connections = config.writers.max(1);
        background.push(tokio::spawn(async move { warm.warm_up(connections).await }));
        let writers = (0..config.writers.max(1))
            .map(|_| {
                tokio::spawn(run_writer(
                    WriterConfig {
                        retry_budget: config.retry_budget,
                        max_spans: config.batch_max_spans,
                        max_bytes: config.batch_max_bytes,
                    },
                    queue.clone(),
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
            spool: spool.clone(),
        };
        Ok((
            pipeline,
            PipelineTasks {
                writers,
                background,
                drainer,
                spool,
            },
        ))
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

    /// Whether the spool takes appends (`Err` with the reason when it is nearly full or failing); `None`
    /// without a spool.
    pub fn spool_health(&self) -> Option<Result<(), String>> {
        self.spool.as_ref().map(Spool::health)
    }

    /// Spooled record bytes not yet committed in PostgreSQL (0 without a spool).
    pub fn spool_backlog_bytes(&self) -> i64 {
        self.spool.as_ref().map_or(0, Spool::backlog_bytes)
    }

    /// Submits one request's spans and waits until they are durable: committed, or fsync'd in the spool if
    /// there is one. `reservation` is the memory the request holds; it is resized to the encoded rows and
    /// released once they are durable or failed.
    pub async fn submit(
        &self,
        spans: EncodedSpans,
        mut reservation: Reservation,
        deadline: Instant,
    ) -> Result<(), IngestError> {
        if spans.span_count == 0 {
            return Ok(());
        }
        if let Some(spool) = &self.spool {
            // The reservation stays with the record until it is written, even if the request stops waiting.
            let appended = tokio::time::timeout_at(deadline, spool.append(&spans, reservation)).await;
            return match appended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(SpoolError::Full)) => Err(IngestError::SpoolFull),
                Ok(Err(SpoolError::Unwritable(reason))) => Err(IngestError::SpoolUnwritable(reason)),
                Ok(Err(SpoolError::Closed)) => Err(IngestError::ShuttingDown),
                // Still appended once the disk answers, so possibly stored: a retry is read once.
                Err(_) => Err(IngestError::SpoolUnwritable(
                    "the spool's disk did not answer in time".into(),
                )),
            };
        }
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let sender = sender.ok_or(IngestError::ShuttingDown)?;
        let bytes = encoded_bytes(&spans);
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
            completion: Completion::Client { ack, deadline },
            _reservation: reservation,
            bytes,
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

    /// Stops taking new spans. What was submitted before is still written (with a spool: what it holds is
    /// drained while the shutdown grace lasts); see [`PipelineTasks::join`].
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(spool) = &self.spool {
            spool.close();
        }
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

/// The memory a request's encoded spans hold while they wait for a writer.
fn encoded_bytes(spans: &EncodedSpans) -> usize {
    spans.rows.len() + spans.trace_index.len() + spans.resources.iter().map(|row| row.body.len()).sum::<usize>()
}

/// Items (requests, or spooled records) the queue holds at most before submitters wait.
const QUEUE_ITEMS: usize = 1024;

/// What the writers take batches from.
struct Queue {
    receiver: mpsc::Receiver<Item>,
    /// An item taken that did not fit the previous batch: first in the next.
    carry: Option<Item>,
}

/// Group commit: waits for the first item, then takes everything else already waiting, up to the caps.
/// `None` once every sender is gone and the queue is empty.
async fn take_batch(queue: &tokio::sync::Mutex<Queue>, max_spans: usize, max_bytes: usize) -> Option<Vec<Item>> {
    let mut queue = queue.lock().await;
    let first = match queue.carry.take() {
        Some(item) => item,
        None => queue.receiver.recv().await?,
    };
    let (mut spans, mut bytes) = (first.spans.span_count, first.bytes);
    let mut batch = vec![first];
    while spans < max_spans && bytes < max_bytes {
        let Ok(item) = queue.receiver.try_recv() else { break };
        if spans + item.spans.span_count > max_spans || bytes + item.bytes > max_bytes {
            queue.carry = Some(item);
            break;
        }
        spans += item.spans.span_count;
        bytes += item.bytes;
        batch.push(item);
    }
    Some(batch)
}

/// Reads the spool and hands its records to the writers until it is closed and drained, or stopped. Runs on
/// a thread of its own (file reads block).
fn run_drainer(spool: &Spool, sender: &mpsc::Sender<Item>, budget: &MemoryBudget, runtime: &tokio::runtime::Handle) {
    let mut reader = Reader::default();
    while let Some(Drained { spans, ticket }) = spool.next_record(&mut reader) {
        let bytes = encoded_bytes(&spans);
        let mut reservation = Reservation::default();
        // Waits while the writers hold the drain budget (PostgreSQL slow or away).
        while budget
            .reserve_blocking(
                runtime,
                &mut reservation,
                bytes.min(budget.total_bytes()),
                Instant::now() + Duration::from_secs(1),
            )
            .is_err()
        {
            if spool.is_stopped() {
                return;
            }
        }
        let item = Item {
            spans,
            completion: Completion::Spooled(ticket),
            _reservation: reservation,
            bytes,
        };
        if sender.blocking_send(item).is_err() {
            return;
        }
    }
}

/// What each writer task is held to.
#[derive(Clone, Copy, Debug)]
struct WriterConfig {
    retry_budget: Duration,
    max_spans: usize,
    max_bytes: usize,
}

/// How long one attempt at writing spooled spans may take (they have no client waiting).
const SPOOLED_WRITE_TIME: Duration = Duration::from_secs(10);

/// A request needs at least this much time left for a writer to start writing it; with less it is refused
/// (not written), so a request is never committed after its client was told it failed.
const MIN_WRITE_TIME: Duration = Duration::from_millis(100);

async fn run_writer(
    config: WriterConfig,
    queue: Arc<tokio::sync::Mutex<Queue>>,
    writer: Arc<PostgresWriter>,
    metrics: CollectorMetrics,
    health: Arc<WriteHealth>,
) {
    while let Some(batch) = take_batch(&queue, config.max_spans, config.max_bytes).await {
        let now = Instant::now();
        let (batch, expired): (Vec<Item>, Vec<Item>) = batch
            .into_iter()
            .partition(|item| item.deadline().is_none_or(|deadline| deadline > now + MIN_WRITE_TIME));
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
        if batch.is_empty() {
            continue;
        }
        // Clients' requests are bounded by their earliest deadline; spooled spans are retried until written.
        let deadline = batch
            .iter()
            .filter_map(Item::deadline)
            .min()
            .map(|deadline| deadline.min(now + config.retry_budget));
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
        match item.completion {
            Completion::Client { ack, .. } => {
                metrics.pending_spans.dec_by(item.spans.span_count as i64);
                metrics.inflight_bytes.dec_by(item.bytes as i64);
                let _ = ack.send(outcome.clone());
            }
            Completion::Spooled(ticket) => match &outcome {
                Ok(()) => ticket.committed(),
                Err(IngestError::Refused(reason)) => ticket.refused(reason),
                // Not written (only when stopping): it stays in the spool for the next start.
                Err(_) => {}
            },
        }
    }
}

/// Writes `parts` in one transaction, retrying what may succeed later: within `deadline` for clients'
/// requests, until it works for spooled spans (`deadline` `None`; the shutdown grace ends that by aborting).
async fn write_with_retry(
    writer: &PostgresWriter,
    parts: &[&EncodedSpans],
    deadline: Option<Instant>,
    metrics: &CollectorMetrics,
    health: &WriteHealth,
) -> Result<(), IngestError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let attempt = health.begin();
        let time = deadline.map_or(SPOOLED_WRITE_TIME, |deadline| {
            deadline.saturating_duration_since(started)
        });
        let result = writer.write(parts, time).await;
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
        let unanswered = matches!(error, tracepost_storage::StorageError::Unanswered);
        if unanswered {
            metrics.batch_outcome_unknown.inc();
        }
        let Some(deadline) = deadline else {
            // Spooled: written again (if the unanswered COMMIT did land, reads show the spans once).
            metrics.batch_write_retries.inc();
            tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "spooled batch not written, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        if unanswered {
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
    fn queued(spans: usize) -> Item {
        let (ack, _) = oneshot::channel();
        Item {
            spans: EncodedSpans {
                span_count: spans,
                ..EncodedSpans::default()
            },
            completion: Completion::Client {
                ack,
                deadline: Instant::now() + Duration::from_secs(10),
            },
            _reservation: Reservation::default(),
            bytes: spans * 100,
        }
    }

    fn queue_of(items: Vec<Item>) -> (mpsc::Sender<Item>, tokio::sync::Mutex<Queue>) {
        let (sender, receiver) = mpsc::channel(QUEUE_ITEMS);
        for item in items {
            assert!(sender.try_send(item).is_ok(), "the queue has room");
        }
        (sender, tokio::sync::Mutex::new(Queue { receiver, carry: None }))
    }

    fn span_counts(batch: &[Item]) -> Vec<usize> {
        batch.iter().map(|item| item.spans.span_count).collect()
    }

    /// Group commit: a free writer takes the requests that are waiting, all of them up to the caps, and
    /// what did not fit goes first in the next transaction.
    #[tokio::test]
    async fn a_free_writer_takes_everything_waiting_up_to_the_caps() {
        let (_sender, queue) = queue_of((1..=5).map(|_| queued(100)).collect());
        let first = take_batch(&queue, 300, usize::MAX).await.expect("batch");
        assert_eq!(span_counts(&first), [100, 100, 100]);
        let second = take_batch(&queue, 300, usize::MAX).await.expect("batch");
        assert_eq!(span_counts(&second), [100, 100]);
        let (_sender, queue) = queue_of(vec![queued(10), queued(10), queued(10)]);
        let by_bytes = take_batch(&queue, usize::MAX, 2000).await.expect("batch");
        assert_eq!(span_counts(&by_bytes), [10, 10]);
    }

    #[tokio::test]
    async fn a_request_that_does_not_fit_goes_first_in_the_next_batch_and_a_huge_one_goes_alone() {
        let (_sender, queue) = queue_of(vec![queued(200), queued(200), queued(5000), queued(1)]);
        assert_eq!(
            span_counts(&take_batch(&queue, 1000, usize::MAX).await.expect("batch")),
            [200, 200]
        );
        assert_eq!(
            span_counts(&take_batch(&queue, 1000, usize::MAX).await.expect("batch")),
            [5000]
        );
        assert_eq!(
            span_counts(&take_batch(&queue, 1000, usize::MAX).await.expect("batch")),
            [1]
        );
    }

    /// No timer: one request waiting is taken at once, not held back for company.
    #[tokio::test(start_paused = true)]
    async fn a_lone_request_is_taken_without_waiting_for_more() {
        let (_sender, queue) = queue_of(vec![queued(4)]);
        let started = Instant::now();
        let batch = take_batch(&queue, 8192, 8 << 20).await.expect("batch");
        assert_eq!(span_counts(&batch), [4]);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the batch waited on the (paused) clock"
        );
    }

    #[tokio::test]
    async fn writers_stop_once_every_sender_is_gone_and_the_queue_is_empty() {
        let (sender, queue) = queue_of(vec![queued(1)]);
        drop(sender);
        assert!(take_batch(&queue, 10, 10_000).await.is_some());
        assert!(take_batch(&queue, 10, 10_000).await.is_none());
    }

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
