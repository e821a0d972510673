//! Request bodies under the ingest limits, shared by OTLP/HTTP and OTLP/gRPC: read within a deadline and
//! reserved from the memory budget as the bytes arrive (from the first byte, before anything is buffered),
//! unframed (gRPC), and decompressed on the blocking pool within the size cap and the budget.

use std::io::Read;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::ingest::ExportError;
use crate::pipeline::{BudgetError, MemoryBudget, Reservation};

/// A body's content coding (`Content-Encoding` for OTLP/HTTP, `grpc-encoding` for gRPC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a content coding header; `None` (absent) is identity.
    pub fn parse(header: Option<&str>) -> Result<Self, String> {
        match header.map(|value| value.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Self::Identity),
            Some("gzip") => Ok(Self::Gzip),
            Some("zstd") => Ok(Self::Zstd),
            Some(other) => {
                // The client's own value, cut short: a refusal never echoes a header back at length.
                let shown: String = other.chars().take(32).collect();
                Err(format!("unsupported content encoding {shown:?}: use gzip or zstd"))
            }
        }
    }
}

/// Decompression output grows (and is reserved) this much at a time.
const CHUNK: usize = 64 << 10;

pub(crate) fn budget_error(error: BudgetError, what: &str) -> ExportError {
    match error {
        BudgetError::TooLarge => ExportError::TooLarge(format!(
            "{what} needs more memory than the collector's whole ingest budget: send smaller requests"
        )),
        BudgetError::Overloaded => ExportError::Ingest(crate::IngestError::Overloaded),
        BudgetError::ShuttingDown => ExportError::Ingest(crate::IngestError::ShuttingDown),
    }
}

/// Reads a whole body: at most `limit` bytes, each reserved before it is kept (as it arrives: a declared
/// length is checked against the cap but not reserved, so a client that announces much and sends little holds
/// only what it sent), all of it before `read_deadline`.
pub(crate) async fn read(
    body: Body,
    content_length: Option<u64>,
    limit: usize,
    budget: &MemoryBudget,
    reservation: &mut Reservation,
    read_deadline: Instant,
) -> Result<Bytes, ExportError> {
    let too_large = || ExportError::TooLarge(format!("body exceeds {limit} bytes"));
    if content_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buffer = BytesMut::new();
    let mut single: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout_at(read_deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ExportError::Decode("the body could not be read".into())),
            Err(_) => return Err(ExportError::Timeout("the body was not received in time".into())),
        };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        let held = single.as_ref().map_or(buffer.len(), Bytes::len);
        let needed = held + data.len();
        if needed > limit {
            return Err(too_large());
        }
        // The buffer at most doubles when it grows: reserve what it will hold.
        let capacity = if needed > buffer.capacity() {
            needed.max(buffer.capacity() * 2).min(limit)
        } else {
            buffer.capacity()
        };
        budget
            .reserve(reservation, capacity, read_deadline)
            .await
            .map_err(|error| budget_error(error, "the body"))?;
        // The common case, one frame, is kept as it came; more are gathered into one buffer.
        match single.take() {
            None if buffer.is_empty() => single = Some(data),
            first => {
                buffer.reserve(capacity - buffer.len());
                if let Some(first) = first {
                    buffer.extend_from_slice(&first);
                }
                buffer.extend_from_slice(&data);
            }
        }
    }
    Ok(single.unwrap_or_else(|| buffer.freeze()))
}

/// Removes gRPC's message framing (a compressed flag and a 4-byte length): a unary request holds exactly one
/// message. Returns the message and whether it is compressed.
pub(crate) fn unframe_grpc(body: &Bytes) -> Result<(Bytes, bool), ExportError> {
    if body.len() < 5 {
        return Err(ExportError::Decode("gRPC message frame is incomplete".into()));
    }
    let compressed = match body[0] {
        0 => false,
        1 => true,
        _ => return Err(ExportError::Decode("invalid gRPC compressed flag".into())),
    };
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 != length {
        return Err(ExportError::Decode(
            "gRPC body must hold exactly one message of its declared length".into(),
        ));
    }
    Ok((body.slice(5..), compressed))
}

/// Decompresses on the calling (blocking-pool) thread: at most `limit` bytes out, each 64 KiB reserved from
/// the budget before it is written.
pub(crate) fn decompress(
    encoding: Encoding,
    input: Bytes,
    limit: usize,
    budget: &MemoryBudget,
    runtime: &tokio::runtime::Handle,
    reservation: &mut Reservation,
    deadline: Instant,
) -> Result<Bytes, ExportError> {
    let invalid = |what: &str| ExportError::Decode(format!("invalid {what} body"));
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(input),
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(input.as_ref())),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(input.as_ref()).map_err(|_| invalid("zstd"))?),
    };
    let too_large = || ExportError::TooLarge(format!("decompressed body exceeds {limit} bytes"));
    let mut chunk = vec![0u8; CHUNK];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                return Err(invalid(match encoding {
                    Encoding::Zstd => "zstd",
                    _ => "gzip",
                }))
            }
        };
        let needed = out.len() + read;
        if needed > limit {
            return Err(too_large());
        }
        if needed > out.capacity() {
            let capacity = (out.capacity() * 2).max(needed).min(limit);
            budget
                .reserve_blocking(runtime, reservation, input.len() + CHUNK + capacity, deadline)
                .map_err(|error| budget_error(error, "the decompressed body"))?;
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&chunk[..read]);
    }
    if out.len() > limit {
        return Err(ExportError::TooLarge(format!(
            "decompressed body exceeds {limit} bytes"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).expect("gzip");
        Bytes::from(encoder.finish().expect("gzip"))
    }

    fn run(encoding: Encoding, input: Bytes, limit: usize, budget: usize) -> Result<Bytes, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let budget = MemoryBudget::new(budget, Duration::from_millis(20));
        let handle = runtime.handle().clone();
        let mut reservation = Reservation::default();
        let deadline = runtime.block_on(async { Instant::now() + Duration::from_secs(5) });
        std::thread::spawn(move || decompress(encoding, input, limit, &budget, &handle, &mut reservation, deadline))
            .join()
            .expect("thread")
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_size_cap() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100 << 10);
        let error = run(Encoding::Gzip, bomb, 1 << 20, 64 << 20).expect_err("too large");
        assert!(matches!(error, ExportError::TooLarge(_)), "{error}");
    }

    #[test]
    fn decompression_waits_for_the_memory_budget_and_refuses_what_can_never_fit() {
        let body = gzip(&vec![7u8; 4 << 20]);
        assert_eq!(
            run(Encoding::Gzip, body.clone(), 8 << 20, 16 << 20)
                .expect("fits")
                .len(),
            4 << 20
        );
        let error = run(Encoding::Gzip, body, 8 << 20, 1 << 20).expect_err("over budget");
        assert!(matches!(error, ExportError::TooLarge(_)), "{error}");
    }

    #[test]
    fn zstd_bodies_are_decompressed_and_garbage_is_a_clear_error() {
        let body = Bytes::from(zstd::encode_all(&b"hello zstd"[..], 3).expect("zstd"));
        assert_eq!(
            run(Encoding::Zstd, body, 1024, 1 << 20).expect("valid"),
            &b"hello zstd"[..]
        );
        let error = run(Encoding::Gzip, Bytes::from_static(b"not gzip"), 1024, 1 << 20).expect_err("invalid");
        assert_eq!(error.to_string(), "cannot decode request: invalid gzip body");
    }

    #[test]
    fn grpc_frames_hold_exactly_one_message() {
        let frame = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(
            unframe_grpc(&frame).expect("valid"),
            (Bytes::from_static(&[8, 1]), false)
        );
        assert!(unframe_grpc(&Bytes::from_static(&[0, 0, 0, 0, 3, 8, 1])).is_err());
        assert!(unframe_grpc(&Bytes::from_static(&[2, 0, 0, 0, 0])).is_err());
        assert!(unframe_grpc(&Bytes::from_static(&[0, 0])).is_err());
    }
}
