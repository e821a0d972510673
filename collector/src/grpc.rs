//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ingest::{ExportError, Ingest, PayloadFormat, Transport};

/// How long clients are told to wait before retrying a refused export.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gRPC method path of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `TraceService/Export`, taking the request as raw bytes so it goes through the same protobuf fast path as
/// OTLP/HTTP ([`crate::wire`]) instead of tonic's generated decoder.
#[derive(Clone, Debug)]
struct ExportMethod {
    ingest: Ingest,
}

impl tonic::server::UnaryService<Bytes> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = futures_util::future::BoxFuture<'static, Result<tonic::Response<Self::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            ingest
                .export_bytes(request.into_inner(), PayloadFormat::Protobuf, Transport::Grpc)
                .await
                .map(tonic::Response::new)
                .map_err(|error| status_of(&error))
        })
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

/// The gRPC server as an axum router (so both listeners share one HTTP stack): gzip and zstd accepted,
/// requests capped at the ingest's `max_request_bytes` before and after decompression.
pub fn grpc_router(ingest: Ingest) -> axum::Router {
    let export = {
        let ingest = ingest.clone();
        move |request: Request| async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let limit = ingest.max_request_bytes();
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limit), None);
            grpc.unary(ExportMethod { ingest }, request).await.into_response()
        }
    };
    axum::Router::new()
        .route(EXPORT_PATH, axum::routing::post(export))
        .fallback(|| async {
            let mut response = Status::unimplemented("unknown method").into_http::<axum::body::Body>();
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            response
        })
        .layer(axum::middleware::from_fn_with_state(ingest, map_codec_status))
}

/// Decodes requests into the raw message bytes and encodes `ExportTraceServiceResponse`s with prost.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

#[derive(Clone, Copy, Debug)]
struct ResponseEncoder;

impl tonic::codec::Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buffer: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buffer)
            .map_err(|error| Status::internal(format!("cannot encode response: {error}")))
    }
}

#[derive(Clone, Copy, Debug)]
struct BytesDecoder;

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buffer: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buffer.copy_to_bytes(buffer.remaining())))
    }
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
        Some(Code::ResourceExhausted) => (ExportError::TooLarge(message()), Code::ResourceExhausted),
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
