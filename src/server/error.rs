//! The core's one error enum. Transports map it to their own status codes
//! (the gRPC transport in one exhaustive `From`); the core never names them.

use crate::engine::EngineError;
use crate::store::StoreError;

use super::worker::{JobError, SubmitError};

/// Every way a call into the core can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Good frame `index` (0-based) of an enrollment was refused.
    #[error("{}: {source}", frame_label(*.index, .name))]
    ReferenceFrame {
        /// Which frame of the call.
        index: usize,
        /// Its name, when the client gave one.
        name: String,
        /// Why.
        source: EngineError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault that is Loupe's, not the caller's.
    #[error("{0}")]
    Internal(String),
}

/// How errors name a good frame of an AddReferences call.
pub fn frame_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("good frame {index}")
    } else {
        format!("good frame {index} ({})", crate::text::quoted(name))
    }
}

/// The message for a full queue or too many frames in flight.
pub(super) const OVERLOADED: &str = "too many frames in flight; retry later or raise --max-pending";

impl From<JobError> for Error {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Engine(error) => Self::Engine(error),
            JobError::DeadlineExceeded(_) => Self::DeadlineExceeded(error.to_string()),
            JobError::Panicked(_) => Self::Internal(error.to_string()),
            JobError::Frame { index, source } => Self::ReferenceFrame {
                index,
                name: String::new(),
                source,
            },
        }
    }
}

impl From<SubmitError> for Error {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full => Self::ResourceExhausted(OVERLOADED.into()),
            SubmitError::Stopped => Self::Unavailable(error.to_string()),
        }
    }
}
