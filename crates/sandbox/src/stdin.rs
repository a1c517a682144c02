//! A process's stdin fed by offset-addressed writes: the client retries a write with the same
//! offset, so bytes already written are skipped rather than written twice.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::error::SandboxError;

pub(crate) type Pipe = Box<dyn AsyncWrite + Send + Unpin>;

pub(crate) struct Stdin {
    state: Mutex<State>,
}

struct State {
    pipe: Option<Pipe>,
    written: u64,
    closed: bool,
}

impl Stdin {
    pub(crate) fn new(pipe: Option<Pipe>) -> Self {
        let closed = pipe.is_none();
        Stdin { state: Mutex::new(State { pipe, written: 0, closed }) }
    }

    /// Writes the part of `data` (which starts at stream offset `offset`) not yet written;
    /// `eof` closes the stream afterwards.
    pub(crate) async fn write(&self, offset: u64, data: &[u8], eof: bool) -> Result<(), SandboxError> {
        let mut s = self.state.lock().await;
        if s.closed {
            let end = offset + data.len() as u64;
            // A retry of writes that already landed (the last one with EOF) is fine.
            if end <= s.written {
                return Ok(());
            }
            return Err(SandboxError::Conflict("stdin is already closed".into()));
        }
        if offset > s.written {
            return Err(SandboxError::Invalid(format!(
                "stdin write at offset {offset} leaves a gap: {} bytes were written so far",
                s.written
            )));
        }
        let skip = (s.written - offset) as usize;
        if skip < data.len() {
            let fresh = &data[skip..];
            let pipe = s.pipe.as_mut().expect("open stdin has a pipe");
            if let Err(e) = pipe.write_all(fresh).await {
                // The process closed its stdin (or exited): later writes fail the same way.
                s.pipe = None;
                s.closed = true;
                return Err(SandboxError::Conflict(format!("the process no longer reads stdin: {e}")));
            }
            let _ = pipe.flush().await;
            s.written += fresh.len() as u64;
        }
        if eof {
            if let Some(mut pipe) = s.pipe.take() {
                let _ = pipe.shutdown().await;
            }
            s.closed = true;
        }
        Ok(())
    }

    /// (bytes written, closed)
    pub(crate) async fn status(&self) -> (u64, bool) {
        let s = self.state.lock().await;
        (s.written, s.closed)
    }
}
