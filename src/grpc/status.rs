//! The core's errors as gRPC status codes: one exhaustive conversion.

use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::imaging::ImagingError;
use crate::model::ModelError;
use crate::proto::convert::ConvertError;
use crate::server::Error;

/// A status code as gRPC spells it (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code of an engine error: the caller's fault, a missing reference, or
/// Loupe's own.
fn engine_code(error: &EngineError) -> Code {
    match error {
        EngineError::Frame(ImagingError::InvalidInput(_))
        | EngineError::InvalidSettings(_)
        | EngineError::Model(ModelError::InputSize { .. }) => Code::InvalidArgument,
        EngineError::NoReferences | EngineError::ReferenceMismatch(_) => Code::FailedPrecondition,
        EngineError::Frame(ImagingError::Internal(_))
        | EngineError::Model(
            ModelError::Read { .. }
            | ModelError::Checksum { .. }
            | ModelError::Contract { .. }
            | ModelError::Device { .. }
            | ModelError::Ort(_),
        )
        | EngineError::Reference(_)
        | EngineError::Heatmap(_) => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Engine(engine) | Error::ReferenceFrame { source: engine, .. } => engine_code(engine),
            Error::Store(_) | Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(%error, "internal error");
        }
        // Storage errors name server paths, which clients are not shown.
        let message = match &error {
            Error::Store(store) => store.for_client(),
            _ => error.to_string(),
        };
        let mut status = Status::new(code, message);
        if let Error::ReferenceFrame { index, .. } = &error
            && code == Code::InvalidArgument
        {
            mark_frame(&mut status, *index);
        }
        status
    }
}

/// Names the good frame of an AddReferences call that was refused, for
/// clients that go on without it ([`super::FRAME_INDEX_METADATA`]).
pub(super) fn mark_frame(status: &mut Status, index: usize) {
    if let Ok(value) = index.to_string().parse() {
        status.metadata_mut().insert(super::FRAME_INDEX_METADATA, value);
    }
}

/// A message that cannot be converted is the caller's fault.
impl From<ConvertError> for Status {
    fn from(error: ConvertError) -> Self {
        Status::invalid_argument(error.0)
    }
}

/// A conversion error as the core's, for a stream's per-frame answer.
pub(super) fn refused(error: ConvertError) -> Error {
    Error::InvalidArgument(error.0)
}
