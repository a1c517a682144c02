//! One error type for the sandbox capability; the router and the protocol adapter each map
//! it to gRPC statuses in one place.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The sandbox or process is in a state that refuses the request (finished, stdin closed).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ferry_store::StoreError> for SandboxError {
    fn from(e: ferry_store::StoreError) -> Self {
        use ferry_store::StoreError as S;
        match e {
            S::NotFound(m) => SandboxError::NotFound(m),
            S::AlreadyExists(m) => SandboxError::AlreadyExists(m),
            S::Invalid(m) => SandboxError::Invalid(m),
            S::FailedPrecondition(m) | S::ResourceExhausted(m) => SandboxError::Conflict(m),
            other => SandboxError::Internal(other.to_string()),
        }
    }
}

impl From<ferry_runtime::Error> for SandboxError {
    fn from(e: ferry_runtime::Error) -> Self {
        match e {
            ferry_runtime::Error::ContainerExited(_) => SandboxError::Conflict("the Sandbox has already finished".into()),
            other => SandboxError::Internal(other.to_string()),
        }
    }
}

impl From<SandboxError> for tonic::Status {
    fn from(e: SandboxError) -> Self {
        use tonic::Status;
        match e {
            SandboxError::NotFound(m) => Status::not_found(m),
            SandboxError::Invalid(m) => Status::invalid_argument(m),
            SandboxError::AlreadyExists(m) => Status::already_exists(m),
            SandboxError::Conflict(m) => Status::failed_precondition(m),
            SandboxError::Unimplemented(m) => Status::unimplemented(m),
            SandboxError::PermissionDenied(m) => Status::permission_denied(m),
            SandboxError::Unauthenticated(m) => Status::unauthenticated(m),
            SandboxError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            SandboxError::Internal(m) => {
                tracing::error!("sandbox failure: {m}");
                Status::internal(m)
            }
        }
    }
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
