//! Queue RPCs: FIFO partitions with long-polling gets.

use std::time::Duration;

use ferry_proto::api;
use ferry_store::{NamedObject, ObjectKind};
use tonic::{Request, Response};

use crate::objects::{creation_info, creation_mode, paging};
use crate::service::{creator, ModalService, Rpc};
use crate::status::{check_id, invalid, OrStatus};

/// Longest a single long poll may hold the call; the client asks for at most 50 s and
/// re-polls, and answering before its deadline keeps the connection healthy.
const MAX_POLL: f32 = 55.0;
const DEFAULT_PARTITION_TTL: i32 = 24 * 3600;

fn metadata(o: &NamedObject) -> api::QueueMetadata {
    api::QueueMetadata { name: o.name.clone().unwrap_or_default(), creation_info: creation_info(o) }
}

fn id(queue_id: &str) -> Result<&str, tonic::Status> {
    check_id(queue_id, "qu", "Queue").map(|_| queue_id)
}

fn poll(seconds: f32, what: &str) -> Result<Duration, tonic::Status> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(invalid(format!("{what} must be a non-negative number of seconds, not {seconds}")));
    }
    Ok(Duration::from_secs_f32(seconds.min(MAX_POLL)))
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::QueueGetOrCreateRequest>) -> Rpc<api::QueueGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let mode = creation_mode(req.object_creation_type, "")?;
    let (obj, _) = s
        .store
        .get_or_create_object(ObjectKind::Queue, &req.environment_name, &req.deployment_name, mode, &by)
        .await
        .or_status()?;
    Ok(Response::new(api::QueueGetOrCreateResponse { queue_id: obj.id.clone(), metadata: Some(metadata(&obj)) }))
}

pub(crate) async fn get_by_id(s: &ModalService, r: Request<api::QueueGetByIdRequest>) -> Rpc<api::QueueGetByIdResponse> {
    let obj = s.store.object(ObjectKind::Queue, id(&r.get_ref().queue_id)?).await.or_status()?;
    Ok(Response::new(api::QueueGetByIdResponse { queue_id: obj.id.clone(), metadata: Some(metadata(&obj)) }))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::QueueHeartbeatRequest>) -> Rpc<()> {
    s.store.heartbeat_object(ObjectKind::Queue, id(&r.get_ref().queue_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn put(s: &ModalService, r: Request<api::QueuePutRequest>) -> Rpc<()> {
    let req = r.into_inner();
    if req.values.is_empty() {
        return Ok(Response::new(()));
    }
    let ttl = if req.partition_ttl_seconds == 0 { DEFAULT_PARTITION_TTL } else { req.partition_ttl_seconds };
    s.store
        .queue_put(id(&req.queue_id)?, &req.partition_key, &req.values, ttl as i64)
        .await
        .or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn get(s: &ModalService, r: Request<api::QueueGetRequest>) -> Rpc<api::QueueGetResponse> {
    let req = r.into_inner();
    let n = req.n_values.clamp(1, 5_000) as i64;
    let timeout = poll(req.timeout, "timeout")?;
    let values = s.store.queue_get(id(&req.queue_id)?, &req.partition_key, n, timeout).await.or_status()?;
    Ok(Response::new(api::QueueGetResponse { values }))
}

pub(crate) async fn next_items(s: &ModalService, r: Request<api::QueueNextItemsRequest>) -> Rpc<api::QueueNextItemsResponse> {
    let req = r.into_inner();
    let timeout = poll(req.item_poll_timeout, "item_poll_timeout")?;
    let items = s
        .store
        .queue_next_items(id(&req.queue_id)?, &req.partition_key, &req.last_entry_id, timeout)
        .await
        .or_status()?;
    Ok(Response::new(api::QueueNextItemsResponse {
        items: items.into_iter().map(|i| api::QueueItem { value: i.value, entry_id: i.entry_id }).collect(),
    }))
}

pub(crate) async fn len(s: &ModalService, r: Request<api::QueueLenRequest>) -> Rpc<api::QueueLenResponse> {
    let req = r.get_ref();
    if req.total && !req.partition_key.is_empty() {
        return Err(invalid("Partition must be null when requesting total length."));
    }
    let n = s.store.queue_len(id(&req.queue_id)?, &req.partition_key, req.total).await.or_status()?;
    Ok(Response::new(api::QueueLenResponse { len: n as i32 }))
}

pub(crate) async fn clear(s: &ModalService, r: Request<api::QueueClearRequest>) -> Rpc<()> {
    let req = r.get_ref();
    if req.all_partitions && !req.partition_key.is_empty() {
        return Err(invalid("Partition must be null when requesting to clear all."));
    }
    s.store.queue_clear(id(&req.queue_id)?, &req.partition_key, req.all_partitions).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::QueueDeleteRequest>) -> Rpc<()> {
    s.store.delete_object(ObjectKind::Queue, id(&r.get_ref().queue_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::QueueListRequest>) -> Rpc<api::QueueListResponse> {
    let req = r.into_inner();
    let (before, limit) = paging(req.pagination);
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let objs = s.store.list_objects(ObjectKind::Queue, &req.environment_name, before, limit).await.or_status()?;
    let mut queues = Vec::with_capacity(objs.len());
    for o in &objs {
        let summary = s.store.queue_summary(&o.id, req.total_size_limit as i64).await.or_status()?;
        queues.push(api::queue_list_response::QueueInfo {
            name: o.name.clone().unwrap_or_default(),
            created_at: o.created_at,
            num_partitions: summary.num_partitions as i32,
            total_size: summary.total_items as i32,
            queue_id: o.id.clone(),
            metadata: Some(metadata(o)),
        });
    }
    Ok(Response::new(api::QueueListResponse { queues, environment_name: env.name }))
}
