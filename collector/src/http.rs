//! OTLP/HTTP: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip- or zstd-compressed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use crate::body::Encoding;
use crate::grpc::RETRY_AFTER;
use crate::ingest::{ExportError, ExportRequest, Ingest, PayloadFormat, Transport};

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
    let headers = request.headers();
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let encoding = match Encoding::parse(header(header::CONTENT_ENCODING)) {
        Ok(encoding) => encoding,
        Err(reason) => {
            let error = ExportError::Decode(reason);
            ingest.count_refusal(Transport::Http, &error);
            return export_error_response(format, &error);
        }
    };
    let content_length = header(header::CONTENT_LENGTH).and_then(|value| value.parse().ok());
    let export = ExportRequest {
        body: request.into_body(),
        content_length,
        encoding,
        grpc_framed: false,
        format,
    };
    match ingest.export(export, Transport::Http).await {
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
        ExportError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
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
        StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded as i32,
        _ => tonic::Code::Internal as i32,
    }
}
