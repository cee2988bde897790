//! The service's errors and their one conversion into `tonic::Status`.

use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::imaging::ImagingError;
use crate::model::ModelError;
use crate::store::StoreError;

use super::worker::{JobError, SubmitError};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Malformed frame, settings or request.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such recipe.
    #[error("{0}")]
    NotFound(String),
    /// The recipe name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The recipe cannot do that yet (no reference).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too much work in flight.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The deadline passed first.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Not ready (model loading) or shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault that is Loupe's, not the caller's.
    #[error("{0}")]
    Internal(String),
}

impl From<JobError> for ServiceError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Engine(error) => Self::Engine(error),
            JobError::DeadlineExceeded(_) => Self::DeadlineExceeded(error.to_string()),
            JobError::Frame { index, source } => match Self::from(source) {
                Self::Engine(engine) => Self::Engine(engine).prefixed(&format!("good frame {index}: ")),
                other => other,
            },
        }
    }
}

impl From<SubmitError> for ServiceError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full => Self::ResourceExhausted(
                "too many frames in flight; retry later or raise --max-pending".into(),
            ),
            SubmitError::Stopped => Self::Unavailable(error.to_string()),
        }
    }
}

impl ServiceError {
    /// The same error with `prefix` in front of its message, keeping its
    /// status code.
    pub fn prefixed(self, prefix: &str) -> Self {
        let status = Status::from(self);
        Self::from_status(status.code(), format!("{prefix}{}", status.message()))
    }

    fn from_status(code: Code, message: String) -> Self {
        match code {
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::DeadlineExceeded => Self::DeadlineExceeded(message),
            Code::Unavailable => Self::Unavailable(message),
            _ => Self::Internal(message),
        }
    }
}

fn engine_code(error: &EngineError) -> Code {
    match error {
        EngineError::Frame(ImagingError::Internal(_)) => Code::Internal,
        EngineError::Frame(_) | EngineError::InvalidSettings(_) => Code::InvalidArgument,
        EngineError::Model(ModelError::InputSize { .. }) => Code::InvalidArgument,
        EngineError::NoReferences | EngineError::ReferenceMismatch(_) => Code::FailedPrecondition,
        EngineError::Model(_) | EngineError::Reference(_) | EngineError::Heatmap(_) => Code::Internal,
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        let code = match &error {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Engine(engine) => engine_code(engine),
            ServiceError::Store(_) | ServiceError::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(%message, "internal error");
        }
        Status::new(code, message)
    }
}
