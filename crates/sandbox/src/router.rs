//! The `modal.task_command_router.TaskCommandRouter` service: exec into a sandbox, its stdio,
//! stdin, wait/poll, readiness, filesystem snapshots.
//!
//! Every call carries `authorization: Bearer <jwt>` from `*GetCommandRouterAccess`; the token
//! names one sandbox's task, and a request for any other task is refused. Expired or forged
//! tokens answer UNAUTHENTICATED (the client then fetches a fresh one); a valid token for
//! another sandbox answers PERMISSION_DENIED.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::secret_source::Source;
use ferry_proto::api::SecretSource;
use ferry_proto::modal::task_command_router as tcr;
use tcr::task_command_router_server::{TaskCommandRouter, TaskCommandRouterServer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::SandboxError;
use crate::exec::{ExecExit, ExecRequest, StreamTo};
use crate::output::Read;
use crate::sandbox::LiveSandbox;
use crate::Sandboxes;

type Rpc<T> = Result<Response<T>, Status>;

/// Largest stdio message sent (the client's and tonic's limits are far above).
const STDIO_CHUNK: usize = 1024 * 1024;

/// Serves the router on `listener` until the task is dropped; over TLS when given a PEM
/// certificate chain and key (the API's own, so clients trust it the same way).
pub async fn serve(sandboxes: Sandboxes, listener: tokio::net::TcpListener, tls: Option<(Vec<u8>, Vec<u8>)>) -> Result<(), tonic::transport::Error> {
    let svc = TaskCommandRouterServer::new(Router { sandboxes })
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .initial_stream_window_size(Some(16 * 1024 * 1024))
        .initial_connection_window_size(Some(64 * 1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(svc)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
}

/// Binds the router's port (0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

struct Router {
    sandboxes: Sandboxes,
}

impl Router {
    /// The sandbox the bearer token admits to, which must be the one `task_id` names.
    fn admit<T>(&self, req: &Request<T>, task_id: &str) -> Result<Arc<LiveSandbox>, Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let token = header.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("missing bearer token for the Sandbox router"))?;
        let claims = self.sandboxes.token_key().verify(token, "router")?;
        if claims.task != task_id {
            return Err(Status::permission_denied("this token does not grant access to that Sandbox"));
        }
        let live = self.sandboxes.live_by_task(task_id)?;
        if live.id != claims.sub {
            return Err(Status::permission_denied("this token does not grant access to that Sandbox"));
        }
        live.touch();
        Ok(live)
    }

    /// The environment an exec gets from its `secret_sources` (stored secrets and inline env).
    async fn env_of(&self, sources: &[SecretSource], inline: &HashMap<String, String>) -> Result<Vec<(String, String)>, Status> {
        let mut env = Vec::new();
        for s in sources {
            match &s.source {
                Some(Source::SecretId(id)) => {
                    let values = self.sandboxes.store().secret_values(id).await.map_err(SandboxError::from)?;
                    env.extend(values);
                }
                Some(Source::Env(map)) => env.extend(map.contents.iter().map(|(k, v)| (k.clone(), v.clone()))),
                None => {}
            }
        }
        env.extend(inline.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(env)
    }
}

fn stream_to(config: i32, is_stderr: bool) -> StreamTo {
    match (config, is_stderr) {
        (1, _) => StreamTo::Pipe,
        (2, true) => StreamTo::Stdout,
        _ => StreamTo::DevNull,
    }
}

fn exit_status(e: ExecExit) -> (Option<i32>, Option<i32>) {
    match e {
        ExecExit::Code(c) => (Some(c), None),
        ExecExit::Signal(s) => (None, Some(s)),
    }
}

#[tonic::async_trait]
impl TaskCommandRouter for Router {
    async fn task_exec_start(&self, r: Request<tcr::TaskExecStartRequest>) -> Rpc<tcr::TaskExecStartResponse> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let req = r.into_inner();
        if !req.container_id.is_empty() {
            return Err(Status::unimplemented("Ferry does not implement sidecar containers in Sandboxes yet"));
        }
        // Older clients name stored secrets in secret_ids rather than secret_sources.
        let mut sources = req.secret_sources.clone();
        sources.extend(req.secret_ids.iter().map(|id| SecretSource { source: Some(Source::SecretId(id.clone())) }));
        let mut env = self.env_of(&sources, &req.env).await?;
        let tty = req.pty_info.as_ref().filter(|p| p.enabled).map(|p| {
            for (k, v) in [("TERM", &p.env_term), ("COLORTERM", &p.env_colorterm), ("TERM_PROGRAM", &p.env_term_program)] {
                if !v.is_empty() {
                    env.push((k.to_string(), v.clone()));
                }
            }
            (p.winsz_rows.min(u16::MAX as u32) as u16, p.winsz_cols.min(u16::MAX as u32) as u16)
        });
        let exec = ExecRequest {
            exec_id: req.exec_id.clone(),
            command: req.command_args.clone(),
            env,
            workdir: req.workdir.clone(),
            timeout: req.timeout_secs.filter(|t| *t > 0).map(|t| Duration::from_secs(t as u64)),
            stdout: stream_to(req.stdout_config, false),
            stderr: stream_to(req.stderr_config, true),
            tty,
        };
        if exec.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id is required"));
        }
        self.sandboxes.commit_synced_volumes(&live, &exec.command).await;
        live.exec(exec).await?;
        Ok(Response::new(tcr::TaskExecStartResponse {}))
    }

    async fn task_exec_stdio_read(&self, r: Request<tcr::TaskExecStdioReadRequest>) -> Rpc<BoxStream<tcr::TaskExecStdioReadResponse>> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let req = r.into_inner();
        let exec = live.get_exec(&req.exec_id)?;
        let buf = if req.file_descriptor == 1 { exec.stderr.clone() } else { exec.stdout.clone() };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut offset = req.offset;
        tokio::spawn(async move {
            loop {
                match buf.read(offset, STDIO_CHUNK).await {
                    Read::Data { start, data } => {
                        offset = start + data.len() as u64;
                        if tx.send(Ok(tcr::TaskExecStdioReadResponse { data: data.to_vec() })).await.is_err() {
                            return;
                        }
                        buf.consumed(offset);
                    }
                    Read::Eof => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn task_exec_stdin_write(&self, r: Request<tcr::TaskExecStdinWriteRequest>) -> Rpc<tcr::TaskExecStdinWriteResponse> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let req = r.into_inner();
        let exec = live.get_exec(&req.exec_id)?;
        exec.stdin.write(req.offset, &req.data, req.eof).await?;
        Ok(Response::new(tcr::TaskExecStdinWriteResponse {}))
    }

    async fn task_exec_stdin_write_stream(&self, r: Request<Streaming<tcr::TaskExecStdinWriteStreamRequest>>) -> Rpc<tcr::TaskExecStdinWriteStreamResponse> {
        use tcr::task_exec_stdin_write_stream_request::Payload;
        let auth = r.metadata().clone();
        let mut stream = r.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stdin stream"))?;
        let Some(Payload::Start(start)) = first.payload else {
            return Err(Status::invalid_argument("a stdin stream must begin with `start`"));
        };
        let mut probe = Request::new(());
        *probe.metadata_mut() = auth;
        let live = self.admit(&probe, &start.task_id)?;
        let exec = live.get_exec(&start.exec_id)?;
        let mut offset = start.offset;
        while let Some(msg) = stream.message().await? {
            match msg.payload {
                Some(Payload::Data(data)) => {
                    exec.stdin.write(offset, &data, false).await?;
                    offset += data.len() as u64;
                }
                Some(Payload::End(_)) => {
                    exec.stdin.write(offset, &[], true).await?;
                    break;
                }
                Some(Payload::Start(_)) => return Err(Status::invalid_argument("`start` may only come first")),
                None => {}
            }
        }
        Ok(Response::new(tcr::TaskExecStdinWriteStreamResponse {}))
    }

    async fn task_exec_stdin_status(&self, r: Request<tcr::TaskExecStdinStatusRequest>) -> Rpc<tcr::TaskExecStdinStatusResponse> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let exec = live.get_exec(&r.get_ref().exec_id)?;
        let (num_bytes_written, closed) = exec.stdin.status().await;
        Ok(Response::new(tcr::TaskExecStdinStatusResponse { num_bytes_written, closed }))
    }

    async fn task_exec_poll(&self, r: Request<tcr::TaskExecPollRequest>) -> Rpc<tcr::TaskExecPollResponse> {
        use tcr::task_exec_poll_response::ExitStatus;
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let exec = live.get_exec(&r.get_ref().exec_id)?;
        let exit_status = exec.poll().map(|e| match exit_status(e) {
            (Some(c), _) => ExitStatus::Code(c),
            (_, s) => ExitStatus::Signal(s.unwrap_or(0)),
        });
        Ok(Response::new(tcr::TaskExecPollResponse { exit_status }))
    }

    async fn task_exec_wait(&self, r: Request<tcr::TaskExecWaitRequest>) -> Rpc<tcr::TaskExecWaitResponse> {
        use tcr::task_exec_wait_response::ExitStatus;
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let exec = live.get_exec(&r.get_ref().exec_id)?;
        let exit_status = match exit_status(exec.wait().await) {
            (Some(c), _) => ExitStatus::Code(c),
            (_, s) => ExitStatus::Signal(s.unwrap_or(0)),
        };
        Ok(Response::new(tcr::TaskExecWaitResponse { exit_status: Some(exit_status) }))
    }

    async fn sandbox_stdio_read_v2(&self, r: Request<tcr::SandboxStdioReadV2Request>) -> Rpc<BoxStream<tcr::SandboxStdioReadV2Response>> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let req = r.into_inner();
        let buf = if req.file_descriptor == 1 { live.stderr.clone() } else { live.stdout.clone() };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut offset = req.offset;
        tokio::spawn(async move {
            loop {
                match buf.read(offset, STDIO_CHUNK).await {
                    Read::Data { start, data } => {
                        offset = start + data.len() as u64;
                        let msg = tcr::SandboxStdioReadV2Response { data: data.to_vec(), starting_offset: start };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Read::Eof => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn sandbox_stdin_write_v2(&self, r: Request<tcr::SandboxStdinWriteV2Request>) -> Rpc<tcr::SandboxStdinWriteV2Response> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let req = r.into_inner();
        live.stdin.write(req.offset, &req.data, req.eof).await?;
        Ok(Response::new(tcr::SandboxStdinWriteV2Response {}))
    }

    async fn sandbox_wait_until_ready(&self, r: Request<tcr::SandboxWaitUntilReadyTcrRequest>) -> Rpc<tcr::SandboxWaitUntilReadyTcrResponse> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        let timeout = Duration::from_secs_f32(r.get_ref().timeout.clamp(0.0, 3600.0));
        let ready_at = live.wait_ready(timeout).await?;
        Ok(Response::new(tcr::SandboxWaitUntilReadyTcrResponse { ready_at }))
    }

    async fn task_snapshot_filesystem(&self, r: Request<tcr::TaskSnapshotFilesystemRequest>) -> Rpc<tcr::TaskSnapshotFilesystemResponse> {
        let live = self.admit(&r, &r.get_ref().task_id)?;
        if !r.get_ref().container_id.is_empty() {
            return Err(Status::unimplemented("Ferry does not implement sidecar containers in Sandboxes yet"));
        }
        let image_id = self.sandboxes.snapshot_filesystem(&live.task_id).await?;
        Ok(Response::new(tcr::TaskSnapshotFilesystemResponse { image_id }))
    }
}
