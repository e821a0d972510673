//! OTLP/HTTP: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip-compressed.

use std::io::Read;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use crate::grpc::RETRY_AFTER;
use crate::ingest::{ExportError, Ingest, PayloadFormat, Transport};

/// The OTLP/HTTP router: `POST /v1/traces`.
pub fn http_router(ingest: Ingest) -> axum::Router {
    axum::Router::new().route("/v1/traces", post(export)).with_state(ingest)
}

async fn export(State(ingest): State<Ingest>, request: Request) -> Response {
    let Some(format) = payload_format(request.headers()) else {
        let error =
            ExportError::Decode("unsupported content-type: use application/x-protobuf or application/json".into());
        ingest.count_refusal(Transport::Http, &error);
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadFormat::Json,
            &error.to_string(),
        );
    };
    let body = match read_body(&ingest, request).await {
        Ok(body) => body,
        Err(error) => {
            ingest.count_refusal(Transport::Http, &error);
            return export_error_response(format, &error);
        }
    };
    match ingest.export_bytes(body, format, Transport::Http).await {
        Ok(response) => success_response(format, &response),
        Err(error) => export_error_response(format, &error),
    }
}

fn payload_format(headers: &HeaderMap) -> Option<PayloadFormat> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = content_type.split(';').next()?.trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Some(PayloadFormat::Protobuf),
        "application/json" => Some(PayloadFormat::Json),
        _ => None,
    }
}

/// Reads the body, capping both the bytes on the wire and the bytes after gzip decompression.
async fn read_body(ingest: &Ingest, request: Request) -> Result<Bytes, ExportError> {
    let limit = ingest.max_request_bytes();
    let encoding = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(ExportError::Decode(format!(
                "unsupported content-encoding {other:?}: use gzip"
            )))
        }
    };
    let body = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                ExportError::TooLarge(format!("body exceeds {limit} bytes"))
            } else {
                ExportError::Decode(format!("cannot read body: {error}"))
            }
        })?;
    let body = body.to_bytes();
    if !gzip {
        return Ok(body);
    }
    let mut decompressed = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::GzDecoder::new(body.as_ref())
        .take(limit as u64 + 1)
        .read_to_end(&mut decompressed)
        .map_err(|error| ExportError::Decode(format!("invalid gzip body: {error}")))?;
    if decompressed.len() > limit {
        return Err(ExportError::TooLarge(format!(
            "decompressed body exceeds {limit} bytes"
        )));
    }
    Ok(Bytes::from(decompressed))
}

fn success_response(format: PayloadFormat, response: &ExportTraceServiceResponse) -> Response {
    match format {
        PayloadFormat::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        PayloadFormat::Json => {
            let body = serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec());
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

fn export_error_response(format: PayloadFormat, error: &ExportError) -> Response {
    let status = match error {
        ExportError::Decode(_) => StatusCode::BAD_REQUEST,
        ExportError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ExportError::Ingest(ingest) if ingest.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        ExportError::Ingest(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = error_response(status, format, &error.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER.as_secs()));
    }
    response
}

/// OTLP/HTTP error bodies are a `google.rpc.Status` in the request's encoding.
fn error_response(status: StatusCode, format: PayloadFormat, message: &str) -> Response {
    let code = grpc_code_for(status);
    match format {
        PayloadFormat::Protobuf => {
            let body = tonic_types::Status {
                code,
                message: message.to_owned(),
                details: Vec::new(),
            }
            .encode_to_vec();
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Body::from(body),
            )
                .into_response()
        }
        PayloadFormat::Json => {
            let body = serde_json::json!({ "code": code, "message": message });
            (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
    }
}

fn grpc_code_for(status: StatusCode) -> i32 {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument as i32,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted as i32,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable as i32,
        _ => tonic::Code::Internal as i32,
    }
}
