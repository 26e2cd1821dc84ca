//! One error type for every handler: each maps to a status and a JSON [`ErrorBody`]. Internal errors
//! are logged in full and answered without their details.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_api::ErrorBody;
use gantry_store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct AppError {
    /// The status.
    pub status: StatusCode,
    /// The message for the client.
    pub message: String,
}

impl AppError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> AppError {
        AppError {
            status,
            message: message.into(),
        }
    }
    /// `400`.
    pub fn bad_request(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, message)
    }
    /// `401`.
    pub fn unauthorized(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, message)
    }
    /// `404`.
    pub fn not_found(what: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, what)
    }
    /// `409`.
    pub fn conflict(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::CONFLICT, message)
    }
    /// `500`, logged with the details, which the client does not see.
    pub fn internal(err: impl std::fmt::Display) -> AppError {
        tracing::error!(error = %err, "internal error");
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> AppError {
        match e {
            StoreError::Conflict(what) => AppError::conflict(format!("{what} already exists")),
            StoreError::LeaseLost | StoreError::UploadGone => AppError::conflict(e.to_string()),
            StoreError::LogGap(_) => {
                AppError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string())
            }
            StoreError::Database(_) => AppError::internal(e),
        }
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> AppError {
        AppError::internal(format!("{e:#}"))
    }
}

impl From<BytesRejection> for AppError {
    fn from(r: BytesRejection) -> AppError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::new(status, "the body is over the size limit")
        } else {
            AppError::new(status, r.body_text())
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> AppError {
        AppError::new(r.status(), r.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> AppError {
        AppError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> AppError {
        AppError::bad_request(r.body_text())
    }
}

/// The result of a handler.
pub type AppResult<T> = Result<T, AppError>;
