//! The one place where store errors become gRPC statuses the client understands.

use ferry_store::StoreError;
use tonic::Status;

pub(crate) fn to_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Unavailable(m) => Status::unavailable(m),
        e @ (StoreError::Io(_) | StoreError::Db(_) | StoreError::Migrate(_)) => {
            tracing::error!("store failure: {e}");
            Status::internal(format!("Ferry's store failed: {e}"))
        }
    }
}

/// Converts a store result into a tonic one.
pub(crate) trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, StoreError> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Object ids must carry the kind's prefix; anything else is a malformed request.
pub(crate) fn check_id(id: &str, prefix: &str, what: &str) -> Result<(), Status> {
    if id.len() > 3 && id.starts_with(prefix) && id.as_bytes()[prefix.len()] == b'-' && id.len() < 128 {
        Ok(())
    } else if id.is_empty() {
        Err(invalid(format!("missing {what} id")))
    } else {
        Err(invalid(format!("'{id}' is not a {what} id (expected '{prefix}-...')")))
    }
}
