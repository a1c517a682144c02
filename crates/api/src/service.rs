//! The `ModalClient` service: each method delegates to the module of its RPC family. Methods
//! not listed here fall through to the generated stub, which the gateway reports as
//! "Ferry does not implement <RPC> yet".

use std::pin::Pin;
use std::sync::Arc;

use ferry_proto::api::{self, modal_client_server::ModalClient};
use ferry_store::{Principal, Store};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::ApiConfig;

pub(crate) type Rpc<T> = Result<Response<T>, Status>;
pub(crate) type RpcStream<T> = Result<Response<Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>>, Status>;

/// The service shared by all connections.
#[derive(Clone)]
pub struct ModalService {
    pub(crate) store: Store,
    pub(crate) config: Arc<ApiConfig>,
    pub(crate) images: Arc<crate::images::ImageService>,
    pub(crate) scheduler: crate::scheduler::Scheduler,
    pub(crate) launcher: Arc<crate::launch::Launcher>,
    pub(crate) web: Arc<crate::web::WebCalls>,
    pub(crate) volumes: Arc<ferry_volumes::Volumes>,
    /// Where bytes live (`ferry-blobs`): client blobs, volume blocks, mount files, layers.
    pub(crate) blobs: ferry_blobs::Blobs,
    /// Mount files by SHA-256, cached on this host.
    pub(crate) files: ferry_blobs::ContentFiles,
    /// Sandboxes and their router; `None` until [`ModalService::with_sandboxes`].
    pub(crate) sandboxes: Option<Arc<ferry_sandbox::Sandboxes>>,
    /// The host's GPUs and which task holds each.
    pub(crate) gpus: ferry_gpu::GpuPool,
    /// Clients of detached apps that have left, whose own log streams end.
    pub(crate) left_clients: Arc<crate::apps::LeftClients>,
    /// The log streams following each app, and how far each has sent.
    pub(crate) log_followers: Arc<crate::apps::LogFollowers>,
}

impl ModalService {
    /// Opens the service; inputs not answered before the last stop are queued again.
    pub async fn new(store: Store, config: Arc<ApiConfig>) -> anyhow::Result<Self> {
        let images = crate::images::ImageService::open(store.data_dir(), config.images.clone())?;
        let launcher = crate::launch::Launcher::new(store.data_dir(), images.store.clone(), config.pool.clone(), config.trusted_ca.clone());
        let blobs = ferry_blobs::Blobs::open(&config.storage, store.data_dir())
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the storage {}: {e}", config.storage))?;
        if !blobs.is_local() {
            tracing::info!("storing blobs, volume blocks, mount files and image layers in {}", blobs.describe());
        }
        let files = ferry_blobs::ContentFiles::new(blobs.clone(), store.data_dir());
        let volumes = Arc::new(ferry_volumes::Volumes::open(store.clone(), store.data_dir(), blobs.clone())?);
        let gpus = ferry_gpu::GpuPool::new(config.gpu_inventory.clone());
        // One replica of several when the database is shared (docs/cluster.md); containers
        // reach it at its own address, the public URL.
        let replica = ferry_scheduler::ReplicaOptions {
            exit_on_lost_lease: store.is_shared(),
            ..ferry_scheduler::ReplicaOptions::local(&store, &config.public_url, config.replica_lease)
        };
        let (scheduler, _) = crate::scheduler::Scheduler::open_replica(store.clone(), replica).await?;
        if let Some(fleet) = &config.fleet {
            let scheduler = scheduler.clone();
            fleet.set_log_context(Box::new(move |task_id| scheduler.current_input(task_id)));
        }
        Ok(ModalService {
            volumes,
            blobs,
            files,
            store,
            config,
            images: Arc::new(images),
            scheduler,
            launcher: Arc::new(launcher),
            web: Default::default(),
            sandboxes: None,
            gpus,
            left_clients: Default::default(),
            log_followers: Default::default(),
        })
    }

    pub fn with_sandboxes(mut self, sandboxes: ferry_sandbox::Sandboxes) -> Self {
        self.sandboxes = Some(Arc::new(sandboxes));
        self
    }
}

/// The authenticated caller, put in place by the gateway.
pub(crate) fn principal<T>(req: &Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::User { token_id: String::new() })
}

/// How the caller is recorded in `created_by`.
pub(crate) fn creator<T>(req: &Request<T>) -> String {
    match principal(req) {
        Principal::User { token_id } => token_id,
        Principal::Task { task_id, .. } => task_id,
    }
}

/// Emits the `ModalClient` impl, each listed method delegating to its module's function. The
/// whole impl comes from one macro so that `async_trait` sees the expanded methods.
macro_rules! modal_client_impl {
    (
        unary { $( $method:ident ( $req:ty ) -> $resp:ty => $path:path ; )* }
        streams { $( $smethod:ident ( $sreq:ty ) -> $item:ty => $spath:path ; )* }
    ) => {
        #[tonic::async_trait]
        impl ModalClient for ModalService {
            $(
                async fn $method(&self, request: Request<$req>) -> Rpc<$resp> {
                    $path(self, request).await
                }
            )*
            $(
                async fn $smethod(&self, request: Request<$sreq>) -> RpcStream<$item> {
                    $spath(self, request).await
                }
            )*
        }
    };
}

modal_client_impl! {
    unary {
        client_hello(()) -> api::ClientHelloResponse => crate::environments::client_hello;
        workspace_name_lookup(()) -> api::WorkspaceNameLookupResponse => crate::workspace::name_lookup;
        token_info_get(api::TokenInfoGetRequest) -> api::TokenInfoGetResponse => crate::workspace::token_info;
        workspace_dashboard_url_get(api::WorkspaceDashboardUrlRequest) -> api::WorkspaceDashboardUrlResponse => crate::workspace::dashboard_url;
        environment_get_or_create(api::EnvironmentGetOrCreateRequest) -> api::EnvironmentGetOrCreateResponse => crate::environments::get_or_create;
        environment_list(()) -> api::EnvironmentListResponse => crate::environments::list;
        environment_create(api::EnvironmentCreateRequest) -> () => crate::environments::create;
        environment_delete(api::EnvironmentDeleteRequest) -> () => crate::environments::delete;
        environment_update(api::EnvironmentUpdateRequest) -> api::EnvironmentListItem => crate::environments::update;

        app_create(api::AppCreateRequest) -> api::AppCreateResponse => crate::apps::create;
        app_get_or_create(api::AppGetOrCreateRequest) -> api::AppGetOrCreateResponse => crate::apps::get_or_create;
        app_get_by_deployment_name(api::AppGetByDeploymentNameRequest) -> api::AppGetByDeploymentNameResponse => crate::apps::get_by_deployment_name;
        app_heartbeat(api::AppHeartbeatRequest) -> () => crate::apps::heartbeat;
        app_list(api::AppListRequest) -> api::AppListResponse => crate::apps::list;
        app_stop(api::AppStopRequest) -> () => crate::apps::stop;
        app_set_tags(api::AppSetTagsRequest) -> () => crate::apps::set_tags;
        app_get_tags(api::AppGetTagsRequest) -> api::AppGetTagsResponse => crate::apps::get_tags;
        app_client_disconnect(api::AppClientDisconnectRequest) -> () => crate::apps::client_disconnect;
        app_fetch_logs(api::AppFetchLogsRequest) -> api::AppFetchLogsResponse => crate::apps::fetch_logs;
        app_count_logs(api::AppCountLogsRequest) -> api::AppCountLogsResponse => crate::apps::count_logs;
        app_get_lifecycle(api::AppGetLifecycleRequest) -> api::AppGetLifecycleResponse => crate::apps::get_lifecycle;
        task_list(api::TaskListRequest) -> api::TaskListResponse => crate::apps::task_list;
        task_get_info(api::TaskGetInfoRequest) -> api::TaskGetInfoResponse => crate::apps::task_get_info;
        container_stop(api::ContainerStopRequest) -> api::ContainerStopResponse => crate::apps::container_stop;
        mount_get_or_create(api::MountGetOrCreateRequest) -> api::MountGetOrCreateResponse => crate::mounts::get_or_create;
        mount_batched_check_existence(api::MountBatchedCheckExistenceRequest) -> api::MountBatchedCheckExistenceResponse => crate::mounts::check_existence;
        mount_put_file(api::MountPutFileRequest) -> api::MountPutFileResponse => crate::mounts::put_file;
        blob_create(api::BlobCreateRequest) -> api::BlobCreateResponse => crate::blobs::create;
        blob_get(api::BlobGetRequest) -> api::BlobGetResponse => crate::blobs::get;
        image_get_or_create(api::ImageGetOrCreateRequest) -> api::ImageGetOrCreateResponse => crate::images::get_or_create;
        image_from_id(api::ImageFromIdRequest) -> api::ImageFromIdResponse => crate::images::from_id;
        image_publish(api::ImagePublishRequest) -> api::ImagePublishResponse => crate::images::publish;
        image_get_by_tag(api::ImageGetByTagRequest) -> api::ImageGetByTagResponse => crate::images::get_by_tag;
        image_list_tags(api::ImageListTagsRequest) -> api::ImageListTagsResponse => crate::images::list_tags;
        image_tag_revisions(api::ImageTagRevisionsRequest) -> api::ImageTagRevisionsResponse => crate::images::tag_revisions;
        image_name_delete(api::ImageNameDeleteRequest) -> () => crate::images::name_delete;
        image_build_chain_get(api::ImageBuildChainGetRequest) -> api::ImageBuildChainGetResponse => crate::images::build_chain_get;
        function_precreate(api::FunctionPrecreateRequest) -> api::FunctionPrecreateResponse => crate::functions::precreate;
        function_create(api::FunctionCreateRequest) -> api::FunctionCreateResponse => crate::functions::create;
        function_get(api::FunctionGetRequest) -> api::FunctionGetResponse => crate::functions::get;
        function_get_by_id(api::FunctionGetByIdRequest) -> api::FunctionGetByIdResponse => crate::functions::get_by_id;
        function_map(api::FunctionMapRequest) -> api::FunctionMapResponse => crate::functions::map;
        function_put_inputs(api::FunctionPutInputsRequest) -> api::FunctionPutInputsResponse => crate::functions::put_inputs;
        function_get_outputs(api::FunctionGetOutputsRequest) -> api::FunctionGetOutputsResponse => crate::functions::get_outputs;
        function_update_scheduling_params(api::FunctionUpdateSchedulingParamsRequest) -> api::FunctionUpdateSchedulingParamsResponse => crate::autoscaler::update;
        function_get_scheduling_params(api::FunctionGetSchedulingParamsRequest) -> api::FunctionGetSchedulingParamsResponse => crate::autoscaler::get;
        function_get_current_stats(api::FunctionGetCurrentStatsRequest) -> api::FunctionStats => crate::autoscaler::current_stats;
        function_get_call_graph(api::FunctionGetCallGraphRequest) -> api::FunctionGetCallGraphResponse => crate::call_graph::get;
        flash_container_register(api::FlashContainerRegisterRequest) -> api::FlashContainerRegisterResponse => crate::flash::register;
        flash_container_deregister(api::FlashContainerDeregisterRequest) -> () => crate::flash::deregister;
        flash_container_list(api::FlashContainerListRequest) -> api::FlashContainerListResponse => crate::flash::list;
        container_hello(()) -> () => crate::container::hello;
        container_heartbeat(api::ContainerHeartbeatRequest) -> api::ContainerHeartbeatResponse => crate::container::heartbeat;
        function_get_inputs(api::FunctionGetInputsRequest) -> api::FunctionGetInputsResponse => crate::container::get_inputs;
        function_put_outputs(api::FunctionPutOutputsRequest) -> () => crate::container::put_outputs;
        task_result(api::TaskResultRequest) -> () => crate::container::task_result;
        function_call_put_data_out(api::FunctionCallPutDataRequest) -> () => crate::container::put_data_out;
        class_create(api::ClassCreateRequest) -> api::ClassCreateResponse => crate::classes::create;
        class_get(api::ClassGetRequest) -> api::ClassGetResponse => crate::classes::get;
        function_bind_params(api::FunctionBindParamsRequest) -> api::FunctionBindParamsResponse => crate::classes::bind_params;
        app_get_layout(api::AppGetLayoutRequest) -> api::AppGetLayoutResponse => crate::classes::app_get_layout;
        function_call_from_id(api::FunctionCallFromIdRequest) -> api::FunctionCallFromIdResponse => crate::functions::call_from_id;
        function_call_get_info(api::FunctionCallGetInfoRequest) -> api::FunctionCallGetInfoResponse => crate::functions::call_get_info;
        function_finish_inputs(api::FunctionFinishInputsRequest) -> () => crate::functions::finish_inputs;
        function_call_cancel(api::FunctionCallCancelRequest) -> () => crate::functions::cancel;
        app_publish(api::AppPublishRequest) -> api::AppPublishResponse => crate::apps::publish;
        app_deployment_history(api::AppDeploymentHistoryRequest) -> api::AppDeploymentHistoryResponse => crate::apps::deployment_history;
        app_rollback(api::AppRollbackRequest) -> api::AppRollbackResponse => crate::apps::rollback;
        app_rollover(api::AppRolloverRequest) -> api::AppRolloverResponse => crate::apps::rollover;
        app_get_info(api::AppGetInfoRequest) -> api::AppGetInfoResponse => crate::apps::get_info;

        secret_get_or_create(api::SecretGetOrCreateRequest) -> api::SecretGetOrCreateResponse => crate::secrets::get_or_create;
        secret_get_info(api::SecretGetInfoRequest) -> api::SecretGetInfoResponse => crate::secrets::get_info;
        secret_list(api::SecretListRequest) -> api::SecretListResponse => crate::secrets::list;
        secret_delete(api::SecretDeleteRequest) -> () => crate::secrets::delete;
        secret_update(api::SecretUpdateRequest) -> () => crate::secrets::update;

        dict_get_or_create(api::DictGetOrCreateRequest) -> api::DictGetOrCreateResponse => crate::dicts::get_or_create;
        dict_get_by_id(api::DictGetByIdRequest) -> api::DictGetByIdResponse => crate::dicts::get_by_id;
        dict_heartbeat(api::DictHeartbeatRequest) -> () => crate::dicts::heartbeat;
        dict_update(api::DictUpdateRequest) -> api::DictUpdateResponse => crate::dicts::update;
        dict_get(api::DictGetRequest) -> api::DictGetResponse => crate::dicts::get;
        dict_contains(api::DictContainsRequest) -> api::DictContainsResponse => crate::dicts::contains;
        dict_len(api::DictLenRequest) -> api::DictLenResponse => crate::dicts::len;
        dict_pop(api::DictPopRequest) -> api::DictPopResponse => crate::dicts::pop;
        dict_clear(api::DictClearRequest) -> () => crate::dicts::clear;
        dict_delete(api::DictDeleteRequest) -> () => crate::dicts::delete;
        dict_list(api::DictListRequest) -> api::DictListResponse => crate::dicts::list;

        queue_get_or_create(api::QueueGetOrCreateRequest) -> api::QueueGetOrCreateResponse => crate::queues::get_or_create;
        queue_get_by_id(api::QueueGetByIdRequest) -> api::QueueGetByIdResponse => crate::queues::get_by_id;
        queue_heartbeat(api::QueueHeartbeatRequest) -> () => crate::queues::heartbeat;
        queue_put(api::QueuePutRequest) -> () => crate::queues::put;
        queue_get(api::QueueGetRequest) -> api::QueueGetResponse => crate::queues::get;
        queue_next_items(api::QueueNextItemsRequest) -> api::QueueNextItemsResponse => crate::queues::next_items;
        queue_len(api::QueueLenRequest) -> api::QueueLenResponse => crate::queues::len;
        queue_clear(api::QueueClearRequest) -> () => crate::queues::clear;
        queue_delete(api::QueueDeleteRequest) -> () => crate::queues::delete;
        queue_list(api::QueueListRequest) -> api::QueueListResponse => crate::queues::list;

        volume_get_or_create(api::VolumeGetOrCreateRequest) -> api::VolumeGetOrCreateResponse => crate::volumes::get_or_create;
        volume_get_by_id(api::VolumeGetByIdRequest) -> api::VolumeGetByIdResponse => crate::volumes::get_by_id;
        volume_heartbeat(api::VolumeHeartbeatRequest) -> () => crate::volumes::heartbeat;
        volume_list(api::VolumeListRequest) -> api::VolumeListResponse => crate::volumes::list;
        volume_delete(api::VolumeDeleteRequest) -> () => crate::volumes::delete;
        volume_rename(api::VolumeRenameRequest) -> () => crate::volumes::rename;
        volume_put_files2(api::VolumePutFiles2Request) -> api::VolumePutFiles2Response => crate::volumes::put_files;
        volume_get_file2(api::VolumeGetFile2Request) -> api::VolumeGetFile2Response => crate::volumes::get_file;
        volume_remove_file2(api::VolumeRemoveFile2Request) -> () => crate::volumes::remove_file;
        volume_copy_files2(api::VolumeCopyFiles2Request) -> () => crate::volumes::copy_files;
        volume_commit(api::VolumeCommitRequest) -> api::VolumeCommitResponse => crate::volumes::commit;
        volume_reload(api::VolumeReloadRequest) -> () => crate::volumes::reload;
        auth_token_get(api::AuthTokenGetRequest) -> api::AuthTokenGetResponse => crate::sandboxes::auth_token_get;
        sandbox_create_v2(api::SandboxCreateV2Request) -> api::SandboxCreateV2Response => crate::sandboxes::create_v2;
        sandbox_create(api::SandboxCreateRequest) -> api::SandboxCreateResponse => crate::sandboxes::create_v1;
        sandbox_wait_v2(api::SandboxWaitRequest) -> api::SandboxWaitResponse => crate::sandboxes::wait;
        sandbox_wait(api::SandboxWaitRequest) -> api::SandboxWaitResponse => crate::sandboxes::wait;
        sandbox_get_task_id_v2(api::SandboxGetTaskIdRequest) -> api::SandboxGetTaskIdResponse => crate::sandboxes::get_task_id;
        sandbox_get_task_id(api::SandboxGetTaskIdRequest) -> api::SandboxGetTaskIdResponse => crate::sandboxes::get_task_id;
        sandbox_terminate_v2(api::SandboxTerminateRequest) -> api::SandboxTerminateResponse => crate::sandboxes::terminate;
        sandbox_terminate(api::SandboxTerminateRequest) -> api::SandboxTerminateResponse => crate::sandboxes::terminate;
        sandbox_get_command_router_access(api::SandboxGetCommandRouterAccessRequest) -> api::SandboxGetCommandRouterAccessResponse => crate::sandboxes::router_access_v2;
        task_get_command_router_access(api::TaskGetCommandRouterAccessRequest) -> api::TaskGetCommandRouterAccessResponse => crate::sandboxes::router_access_v1;
        sandbox_list_v2(api::SandboxListRequest) -> api::SandboxListResponse => crate::sandboxes::list;
        sandbox_list(api::SandboxListRequest) -> api::SandboxListResponse => crate::sandboxes::list;
        sandbox_get_from_name_v2(api::SandboxGetFromNameRequest) -> api::SandboxGetFromNameResponse => crate::sandboxes::get_from_name;
        sandbox_get_from_name(api::SandboxGetFromNameRequest) -> api::SandboxGetFromNameResponse => crate::sandboxes::get_from_name;
        sandbox_tags_get_v2(api::SandboxTagsGetRequest) -> api::SandboxTagsGetResponse => crate::sandboxes::tags_get;
        sandbox_tags_get(api::SandboxTagsGetRequest) -> api::SandboxTagsGetResponse => crate::sandboxes::tags_get;
        sandbox_tags_set_v2(api::SandboxTagsSetRequest) -> () => crate::sandboxes::tags_set;
        sandbox_tags_set(api::SandboxTagsSetRequest) -> () => crate::sandboxes::tags_set;
        sandbox_get_tunnels_v2(api::SandboxGetTunnelsRequest) -> api::SandboxGetTunnelsResponse => crate::sandboxes::get_tunnels;
        sandbox_get_tunnels(api::SandboxGetTunnelsRequest) -> api::SandboxGetTunnelsResponse => crate::sandboxes::get_tunnels;
        sandbox_stdin_write(api::SandboxStdinWriteRequest) -> api::SandboxStdinWriteResponse => crate::sandboxes::stdin_write;
        sandbox_snapshot_fs(api::SandboxSnapshotFsRequest) -> api::SandboxSnapshotFsResponse => crate::sandboxes::snapshot_fs;
        shared_volume_get_or_create(api::SharedVolumeGetOrCreateRequest) -> api::SharedVolumeGetOrCreateResponse => crate::nfs::get_or_create;
        shared_volume_heartbeat(api::SharedVolumeHeartbeatRequest) -> () => crate::nfs::heartbeat;
        shared_volume_list(api::SharedVolumeListRequest) -> api::SharedVolumeListResponse => crate::nfs::list;
        shared_volume_delete(api::SharedVolumeDeleteRequest) -> () => crate::nfs::delete;
        shared_volume_put_file(api::SharedVolumePutFileRequest) -> api::SharedVolumePutFileResponse => crate::nfs::put_file;
        shared_volume_get_file(api::SharedVolumeGetFileRequest) -> api::SharedVolumeGetFileResponse => crate::nfs::get_file;
        shared_volume_list_files(api::SharedVolumeListFilesRequest) -> api::SharedVolumeListFilesResponse => crate::nfs::list_files;
        shared_volume_remove_file(api::SharedVolumeRemoveFileRequest) -> () => crate::nfs::remove_file;
        tunnel_start(api::TunnelStartRequest) -> api::TunnelStartResponse => crate::tunnels::start;
        tunnel_stop(api::TunnelStopRequest) -> api::TunnelStopResponse => crate::tunnels::stop;
    }
    streams {
        app_get_logs(api::AppGetLogsRequest) -> api::TaskLogsBatch => crate::apps::get_logs;
        dict_contents(api::DictContentsRequest) -> api::DictEntry => crate::dicts::contents;
        function_call_get_data_out(api::FunctionCallGetDataRequest) -> api::DataChunk => crate::functions::get_data_out;
        function_call_get_data_in(api::FunctionCallGetDataRequest) -> api::DataChunk => crate::web::get_data_in;
        image_join_streaming(api::ImageJoinStreamingRequest) -> api::ImageJoinStreamingResponse => crate::images::join_streaming;
        volume_list_files2(api::VolumeListFiles2Request) -> api::VolumeListFiles2Response => crate::volumes::list_files;
        sandbox_get_logs(api::SandboxGetLogsRequest) -> api::TaskLogsBatch => crate::sandboxes::get_logs;
        shared_volume_list_files_stream(api::SharedVolumeListFilesRequest) -> api::SharedVolumeListFilesResponse => crate::nfs::list_files_stream;
    }
}
