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
//! A request is acknowledged only after the transaction holding its spans has committed. Its admission permit
//! travels with its spans and is released when they are committed or failed, so memory held by the pipeline
//! never exceeds `max_inflight_bytes` (plus one oversized request at most).

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
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage refused the spans: {0}")]
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
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

/// The handle request handlers submit spans through. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    sender: Arc<Mutex<Option<mpsc::Sender<Item>>>>,
    admission: Arc<Semaphore>,
    admission_permits: u32,
    config: PipelineConfig,
    metrics: CollectorMetrics,
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

/// Admission is counted in KiB so that the semaphore's `u32` permits cover any sensible limit.
const PERMIT_BYTES: usize = 1024;

impl Pipeline {
    /// Starts the batcher and writer tasks.
    pub fn start(config: PipelineConfig, writer: Arc<SpanWriter>, metrics: CollectorMetrics) -> (Self, PipelineTasks) {
        let admission_permits =
            u32::try_from(config.max_inflight_bytes.div_ceil(PERMIT_BYTES).max(1)).unwrap_or(u32::MAX);
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
                ))
            })
            .collect();
        let pipeline = Self {
            sender: Arc::new(Mutex::new(Some(item_sender))),
            admission: Arc::new(Semaphore::new(admission_permits as usize)),
            admission_permits,
            config,
            metrics,
        };
        (pipeline, PipelineTasks { batcher, writers })
    }

    /// Submits one request's spans and waits until they are committed.
    pub async fn submit(&self, spans: EncodedSpans) -> Result<(), IngestError> {
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
        let permits = u32::try_from(bytes.div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, self.admission_permits);
        let permit = tokio::time::timeout(
            self.config.admission_wait,
            self.admission.clone().acquire_many_owned(permits),
        )
        .await
        .map_err(|_| IngestError::Overloaded)?
        .map_err(|_| IngestError::ShuttingDown)?;
        let span_count = spans.span_count as i64;
        let (ack, acknowledged) = oneshot::channel();
        self.metrics.pending_spans.inc_by(span_count);
        self.metrics.inflight_bytes.inc_by(bytes as i64);
        let item = Item {
            spans,
            ack,
            _permit: permit,
            bytes,
        };
        if sender.send(item).await.is_err() {
            self.metrics.pending_spans.dec_by(span_count);
            self.metrics.inflight_bytes.dec_by(bytes as i64);
            return Err(IngestError::ShuttingDown);
        }
        acknowledged
            .await
            .unwrap_or_else(|_| Err(IngestError::Unavailable("writer stopped".into())))
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

async fn run_writer(
    retry_budget: Duration,
    batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<Item>>>>,
    writer: Arc<SpanWriter>,
    metrics: CollectorMetrics,
) {
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(batch) = batch else { return };
        let deadline = Instant::now() + retry_budget;
        let parts: Vec<&EncodedSpans> = batch.iter().map(|item| &item.spans).collect();
        let outcome = write_with_retry(&writer, &parts, deadline, &metrics).await;
        match outcome {
            Err(IngestError::Refused(reason)) if batch.len() > 1 => {
                // One request's data was refused: write each request alone so the others still land.
                tracing::warn!(%reason, requests = batch.len(), "batch refused, writing its requests one by one");
                for item in batch {
                    let outcome = write_with_retry(&writer, &[&item.spans], deadline, &metrics).await;
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
            tracing::error!(%error, spans, "batch not written, its requests get an error");
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
) -> Result<(), IngestError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let error = match writer.write(parts).await {
            Ok(()) => {
                metrics.batch_write_seconds.observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(error) => error,
        };
        if error.is_data_error() {
            return Err(IngestError::Refused(error.to_string()));
        }
        if Instant::now() + backoff >= deadline {
            return Err(IngestError::Unavailable(error.to_string()));
        }
        metrics.batch_write_retries.inc();
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "batch write failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
