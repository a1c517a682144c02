//! What Dicts, Queues and Secrets share on the wire: creation modes, creation info, paging.

use ferry_proto::api;
use ferry_store::{CreationMode, NamedObject};
use tonic::Status;

use crate::status::invalid;

/// Maps the client's `object_creation_type` (plus the owning app, when there is one).
pub(crate) fn creation_mode(kind: i32, app_id: &str) -> Result<CreationMode, Status> {
    use api::ObjectCreationType as T;
    Ok(match T::try_from(kind).map_err(|_| invalid(format!("unknown object_creation_type {kind}")))? {
        T::Unspecified => CreationMode::Lookup,
        T::CreateIfMissing => CreationMode::CreateIfMissing,
        T::CreateFailIfExists => CreationMode::CreateFailIfExists,
        T::CreateOverwriteIfExists => CreationMode::CreateOverwriteIfExists,
        T::Ephemeral => CreationMode::Ephemeral,
        T::AnonymousOwnedByApp => {
            if app_id.is_empty() {
                return Err(invalid("an object owned by an app needs app_id"));
            }
            CreationMode::OwnedByApp(app_id.to_string())
        }
    })
}

pub(crate) fn creation_info(o: &NamedObject) -> Option<api::CreationInfo> {
    Some(api::CreationInfo { created_at: o.created_at, created_by: o.created_by.clone() })
}

/// `(created_before, max_objects)` of a listing request; absent paging lists everything.
pub(crate) fn paging(p: Option<api::ListPagination>) -> (f64, i64) {
    match p {
        Some(p) => (p.created_before, p.max_objects as i64),
        None => (0.0, 0),
    }
}
