//! The protocol side of `ferry-scheduler`: its types for the RPC modules, its errors as gRPC
//! statuses, and the encoded results the server itself gives inputs (cancellation).

use ferry_proto::api;
use prost::Message;
use tonic::Status;

pub(crate) use ferry_scheduler::{Input, NewInput, Outcome, Scheduler, TaskInfo, Work};

/// The gRPC status for a scheduler error; RESOURCE_EXHAUSTED is the code the client retries
/// map inputs on (and reports for `.remote()`).
pub(crate) fn status(e: ferry_scheduler::Error) -> Status {
    match e {
        ferry_scheduler::Error::NotFound(m) => Status::not_found(m),
        ferry_scheduler::Error::Exhausted(m) => Status::resource_exhausted(m),
        ferry_scheduler::Error::Cancelled(m) => Status::failed_precondition(m),
        ferry_scheduler::Error::Store(m) => Status::internal(m),
    }
}

/// The answer of an input whose call was cancelled: TERMINATED, as a cancelled input's
/// container reports it; the client raises it from `.get()` and `.map()`.
pub(crate) fn cancelled_result(why: &str) -> Vec<u8> {
    api::GenericResult {
        status: api::generic_result::GenericStatus::Terminated as i32,
        exception: why.to_string(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// What the server records for a result a container sent.
pub(crate) fn outcome_of(result: &api::GenericResult) -> Outcome {
    use api::generic_result::GenericStatus;
    match GenericStatus::try_from(result.status) {
        Ok(GenericStatus::Success) => Outcome::Done,
        Ok(GenericStatus::Terminated) => Outcome::Cancelled,
        Ok(GenericStatus::Timeout) => Outcome::TimedOut,
        _ => Outcome::Failed,
    }
}

/// What the server records for a failed attempt's encoded result: a timeout, or a failure.
pub(crate) fn failure_outcome(result: &[u8]) -> Outcome {
    match api::GenericResult::decode(result).map(|r| outcome_of(&r)) {
        Ok(Outcome::TimedOut) => Outcome::TimedOut,
        _ => Outcome::Failed,
    }
}
