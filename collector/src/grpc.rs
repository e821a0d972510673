//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ingest::{ExportError, Ingest, Transport};

/// How long clients are told to wait before retrying a refused export.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct GrpcTraceService {
    ingest: Ingest,
}

#[tonic::async_trait]
impl TraceService for GrpcTraceService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        match self
            .ingest
            .export(request.into_inner(), Transport::Grpc)
            .await
        {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(error) => Err(status_of(&error)),
        }
    }
}

fn status_of(error: &ExportError) -> Status {
    match error {
        ExportError::Decode(_) => Status::invalid_argument(error.to_string()),
        ExportError::TooLarge(_) => Status::resource_exhausted(error.to_string()),
        ExportError::Ingest(ingest) if ingest.is_retryable() => Status::with_error_details(
            Code::Unavailable,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        ExportError::Ingest(_) => Status::invalid_argument(error.to_string()),
    }
}

/// The gRPC server as an axum router (so both listeners share one HTTP stack), gzip and zstd accepted,
/// requests capped at the ingest's `max_request_bytes` before and after decompression.
pub fn grpc_router(ingest: Ingest) -> axum::Router {
    let limit = ingest.max_request_bytes();
    let service = TraceServiceServer::new(GrpcTraceService {
        ingest: ingest.clone(),
    })
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
    .max_decoding_message_size(limit);
    tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            ingest,
            map_codec_status,
        ))
}

/// tonic reports an oversized message as `OUT_OF_RANGE` and an undecodable one as `INTERNAL`; OTLP clients
/// expect `RESOURCE_EXHAUSTED` (not retried) and `INVALID_ARGUMENT`. Both are trailers-only responses, so
/// the status is in the response headers; this rewrites it and counts the refusal.
async fn map_codec_status(
    axum::extract::State(ingest): axum::extract::State<Ingest>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let message = || {
        response
            .headers()
            .get("grpc-message")
            .and_then(|value| value.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default()
    };
    let (error, new_code) = match code.map(Code::from_i32) {
        Some(Code::OutOfRange) => (ExportError::TooLarge(message()), Code::ResourceExhausted),
        Some(Code::ResourceExhausted) => {
            (ExportError::TooLarge(message()), Code::ResourceExhausted)
        }
        Some(Code::Internal) => (ExportError::Decode(message()), Code::InvalidArgument),
        _ => return response,
    };
    ingest.count_refusal(Transport::Grpc, &error);
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(new_code as i32));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&error.to_string())) {
        headers.insert("grpc-message", value);
    }
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[index + 1..index + 3], 16) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_percent_round_trip() {
        let text = "size limit, of 16 bytes % exceeded é";
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }
}
