//! Dict RPCs. Keys and values are pickled by the client and kept as opaque bytes.

use ferry_proto::api;
use ferry_store::{NamedObject, ObjectKind};
use futures::StreamExt;
use tonic::{Request, Response};

use crate::objects::{creation_info, creation_mode, paging};
use crate::service::{creator, ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

/// Most bytes one `DictUpdate` may carry.
const MAX_UPDATE_BYTES: usize = 100 * 1024 * 1024;

fn metadata(o: &NamedObject) -> api::DictMetadata {
    api::DictMetadata { name: o.name.clone().unwrap_or_default(), creation_info: creation_info(o) }
}

fn entries(updates: Vec<api::DictEntry>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, tonic::Status> {
    let size: usize = updates.iter().map(|e| e.key.len() + e.value.len()).sum();
    if size > MAX_UPDATE_BYTES {
        return Err(invalid(format!(
            "Dict update of {size} bytes is too large: one update may carry at most 100 MiB; split it into several"
        )));
    }
    Ok(updates.into_iter().map(|e| (e.key, e.value)).collect())
}

fn id(dict_id: &str) -> Result<&str, tonic::Status> {
    check_id(dict_id, "di", "Dict").map(|_| dict_id)
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::DictGetOrCreateRequest>) -> Rpc<api::DictGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let mode = creation_mode(req.object_creation_type, "")?;
    let seed = entries(req.data)?;
    let (obj, created) = s
        .store
        .get_or_create_object(ObjectKind::Dict, &req.environment_name, &req.deployment_name, mode, &by)
        .await
        .or_status()?;
    if created && !seed.is_empty() {
        s.store.dict_update(&obj.id, &seed, false).await.or_status()?;
    }
    Ok(Response::new(api::DictGetOrCreateResponse { dict_id: obj.id.clone(), metadata: Some(metadata(&obj)) }))
}

pub(crate) async fn get_by_id(s: &ModalService, r: Request<api::DictGetByIdRequest>) -> Rpc<api::DictGetByIdResponse> {
    let req = r.into_inner();
    let obj = s.store.object(ObjectKind::Dict, id(&req.dict_id)?).await.or_status()?;
    Ok(Response::new(api::DictGetByIdResponse { dict_id: obj.id.clone(), metadata: Some(metadata(&obj)) }))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::DictHeartbeatRequest>) -> Rpc<()> {
    s.store.heartbeat_object(ObjectKind::Dict, id(&r.get_ref().dict_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn update(s: &ModalService, r: Request<api::DictUpdateRequest>) -> Rpc<api::DictUpdateResponse> {
    let req = r.into_inner();
    let dict_id = id(&req.dict_id)?.to_string();
    let created = s.store.dict_update(&dict_id, &entries(req.updates)?, req.if_not_exists).await.or_status()?;
    Ok(Response::new(api::DictUpdateResponse { created }))
}

pub(crate) async fn get(s: &ModalService, r: Request<api::DictGetRequest>) -> Rpc<api::DictGetResponse> {
    let req = r.get_ref();
    let value = s.store.dict_get(id(&req.dict_id)?, &req.key).await.or_status()?;
    Ok(Response::new(api::DictGetResponse { found: value.is_some(), value }))
}

pub(crate) async fn contains(s: &ModalService, r: Request<api::DictContainsRequest>) -> Rpc<api::DictContainsResponse> {
    let req = r.get_ref();
    let value = s.store.dict_get(id(&req.dict_id)?, &req.key).await.or_status()?;
    Ok(Response::new(api::DictContainsResponse { found: value.is_some() }))
}

pub(crate) async fn len(s: &ModalService, r: Request<api::DictLenRequest>) -> Rpc<api::DictLenResponse> {
    let n = s.store.dict_len(id(&r.get_ref().dict_id)?).await.or_status()?;
    Ok(Response::new(api::DictLenResponse { len: n as i32 }))
}

pub(crate) async fn pop(s: &ModalService, r: Request<api::DictPopRequest>) -> Rpc<api::DictPopResponse> {
    let req = r.get_ref();
    let value = s.store.dict_pop(id(&req.dict_id)?, &req.key).await.or_status()?;
    Ok(Response::new(api::DictPopResponse { found: value.is_some(), value }))
}

pub(crate) async fn clear(s: &ModalService, r: Request<api::DictClearRequest>) -> Rpc<()> {
    s.store.dict_clear(id(&r.get_ref().dict_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::DictDeleteRequest>) -> Rpc<()> {
    s.store.delete_object(ObjectKind::Dict, id(&r.get_ref().dict_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::DictListRequest>) -> Rpc<api::DictListResponse> {
    let req = r.into_inner();
    let (before, limit) = paging(req.pagination);
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let objs = s.store.list_objects(ObjectKind::Dict, &req.environment_name, before, limit).await.or_status()?;
    let dicts = objs
        .iter()
        .map(|o| api::dict_list_response::DictInfo {
            name: o.name.clone().unwrap_or_default(),
            created_at: o.created_at,
            dict_id: o.id.clone(),
            metadata: Some(metadata(o)),
        })
        .collect();
    Ok(Response::new(api::DictListResponse { dicts, environment_name: env.name }))
}

/// Streams the entries page by page so a large Dict never sits in memory whole.
pub(crate) async fn contents(s: &ModalService, r: Request<api::DictContentsRequest>) -> RpcStream<api::DictEntry> {
    const PAGE: i64 = 500;
    let req = r.into_inner();
    let dict_id = id(&req.dict_id)?.to_string();
    let store = s.store.clone();
    // A missing Dict is the call's status rather than a broken stream.
    let first = store.dict_page(&dict_id, None, PAGE).await.or_status()?;
    let (want_keys, want_values) = (req.keys, req.values);
    let pages = futures::stream::unfold(Some(first), move |page| {
        let store = store.clone();
        let dict_id = dict_id.clone();
        async move {
            let page = page?;
            if page.is_empty() {
                return None;
            }
            let next = if (page.len() as i64) < PAGE {
                Some(Vec::new())
            } else {
                let last = page.last().map(|(k, _)| k.clone()).unwrap_or_default();
                match store.dict_page(&dict_id, Some(&last), PAGE).await.or_status() {
                    Ok(p) => Some(p),
                    Err(e) => return Some((vec![Err(e)], None)),
                }
            };
            Some((page.into_iter().map(Ok).collect::<Vec<_>>(), next))
        }
    });
    let stream = pages.flat_map(futures::stream::iter).map(move |item| {
        item.map(|(k, v)| api::DictEntry {
            key: if want_keys { k } else { Vec::new() },
            value: if want_values { v } else { Vec::new() },
        })
    });
    Ok(Response::new(Box::pin(stream)))
}
