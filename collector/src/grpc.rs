//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The unary call is served here rather than through tonic's generated server so that gRPC requests go
//! through the same limits as OTLP/HTTP ([`crate::body`]): the body is reserved from the memory budget as it
//! arrives and read within the body deadline, its one length-prefixed message is decompressed (gzip, zstd) on
//! the blocking pool within the size cap, and decoded by the protobuf fast path ([`crate::wire`]). Responses
//! are gRPC's framing: the encoded `ExportTraceServiceResponse` and a `grpc-status` trailer, or a
//! trailers-only error built by tonic.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::body::Encoding;
use crate::ingest::{ExportError, ExportRequest, Ingest, PayloadFormat, Transport};

/// How long clients are told to wait before retrying a refused export.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gRPC method path of OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The encodings accepted, as announced in `grpc-accept-encoding`.
const ACCEPT_ENCODING: &str = "gzip,zstd,identity";

/// The gRPC server as an axum router (so both listeners share one HTTP stack).
pub fn grpc_router(ingest: Ingest) -> axum::Router {
    axum::Router::new()
        .route(EXPORT_PATH, axum::routing::post(export))
        .fallback(not_export)
        .with_state(ingest)
}

/// Whether a request says it is gRPC (`application/grpc`, `application/grpc+proto`, ...).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Any other path. A gRPC call gets gRPC's `UNIMPLEMENTED`; anything else (an OTLP/HTTP exporter pointed at
/// the gRPC port, whose POST to `/v1/traces` would otherwise see HTTP 200 and count its spans as sent) gets
/// a 404 that says where OTLP/HTTP goes.
async fn not_export(State(ingest): State<Ingest>, request: Request) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    if content_type.is_some_and(|value| value.starts_with("application/grpc")) {
        return status_response(Status::unimplemented("unknown method"));
    }
    let error = ExportError::Decode(
        "this is the OTLP/gRPC receiver: send OTLP/HTTP to the OTLP/HTTP receiver (port 4318 by default)".into(),
    );
    ingest.count_refusal(Transport::Grpc, &error);
    let mut response = Response::new(Body::from(format!("{error}\n")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn export(State(ingest): State<Ingest>, request: Request) -> Response {
    let headers = request.headers();
    if !is_grpc(headers) {
        let error = ExportError::Decode("content-type must be application/grpc".into());
        ingest.count_refusal(Transport::Grpc, &error);
        // gRPC's answer to a request that is not gRPC is an HTTP status, not a gRPC one.
        let mut response = Response::new(Body::from(error.to_string()));
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return response;
    }
    let encoding = headers.get("grpc-encoding").and_then(|value| value.to_str().ok());
    let encoding = match Encoding::parse(encoding) {
        Ok(encoding) => encoding,
        Err(reason) => {
            ingest.count_refusal(Transport::Grpc, &ExportError::Decode(reason.clone()));
            let mut response = status_response(Status::unimplemented(reason));
            response
                .headers_mut()
                .insert("grpc-accept-encoding", HeaderValue::from_static(ACCEPT_ENCODING));
            return response;
        }
    };
    let export = ExportRequest {
        body: request.into_body(),
        content_length: None,
        encoding,
        grpc_framed: true,
        format: PayloadFormat::Protobuf,
    };
    match ingest.export(export, Transport::Grpc).await {
        Ok(response) => ok_response(&response),
        Err(error) => status_response(status_of(&error)),
    }
}

fn status_of(error: &ExportError) -> Status {
    match error {
        ExportError::Decode(_) => Status::invalid_argument(error.to_string()),
        ExportError::TooLarge(_) => Status::resource_exhausted(error.to_string()),
        ExportError::Timeout(_) => Status::deadline_exceeded(error.to_string()),
        ExportError::Ingest(ingest) if ingest.is_retryable() => Status::with_error_details(
            Code::Unavailable,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        ExportError::Ingest(_) => Status::invalid_argument(error.to_string()),
    }
}

/// A trailers-only gRPC response carrying `status`.
fn status_response(status: Status) -> Response {
    let mut response = status.into_http::<Body>();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The response message in gRPC framing (uncompressed), then `grpc-status: 0` as a trailer.
fn ok_response(message: &ExportTraceServiceResponse) -> Response {
    let length = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + length);
    frame.put_u8(0);
    frame.put_u32(length as u32);
    message.encode_raw(&mut frame);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(Body::new(StreamBody::new(futures_util::stream::iter(frames))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}
