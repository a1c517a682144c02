//! The workspace and the caller's token: Ferry serves one workspace, named `ferry`.
//!
//! `modal token set` looks the workspace up to name the profile it writes, `modal profile list`
//! shows it, `modal token info` describes the token in use and `modal dashboard` opens the
//! dashboard's URL.

use ferry_proto::api;
use tonic::{Request, Response, Status};

use ferry_store::Principal;
use crate::service::{principal, ModalService, Rpc};
use crate::status::OrStatus;

/// The one workspace's name (also the first part of web endpoint labels).
pub(crate) const WORKSPACE: &str = "ferry";

// The client still reads `workspace_name` (marked deprecated in favour of `username`).
#[allow(deprecated)]
pub(crate) async fn name_lookup(_s: &ModalService, _r: Request<()>) -> Rpc<api::WorkspaceNameLookupResponse> {
    Ok(Response::new(api::WorkspaceNameLookupResponse { workspace_name: WORKSPACE.to_string(), username: WORKSPACE.to_string() }))
}

pub(crate) async fn token_info(s: &ModalService, r: Request<api::TokenInfoGetRequest>) -> Rpc<api::TokenInfoGetResponse> {
    let token_id = match principal(&r) {
        Principal::User { token_id } => token_id,
        Principal::Task { .. } => {
            return Err(Status::permission_denied("a container's task credential is not a token; run `modal token info` where a token is configured"))
        }
    };
    let tokens = s.store.list_tokens().await.or_status()?;
    let token = tokens.into_iter().find(|t| t.token_id == token_id).ok_or_else(|| Status::not_found(format!("token {token_id} is not known (revoked?)")))?;
    let seconds = token.created_at as i64;
    Ok(Response::new(api::TokenInfoGetResponse {
        token_id: token.token_id,
        token_name: token.label,
        workspace_id: format!("ac-{WORKSPACE}"),
        workspace_name: WORKSPACE.to_string(),
        identity: Some(api::token_info_get_response::Identity::UserIdentity(api::UserIdentity {
            user_id: format!("us-{WORKSPACE}"),
            username: WORKSPACE.to_string(),
        })),
        created_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    }))
}

pub(crate) async fn dashboard_url(s: &ModalService, r: Request<api::WorkspaceDashboardUrlRequest>) -> Rpc<api::WorkspaceDashboardUrlResponse> {
    let base = s.config.dashboard_url.as_deref().unwrap_or(&s.config.public_url).trim_end_matches('/');
    // The dashboard lists every environment's apps on one page.
    let _ = &r.get_ref().environment_name;
    let url = format!("{base}/apps");
    Ok(Response::new(api::WorkspaceDashboardUrlResponse { url }))
}
