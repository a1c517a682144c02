//! Container and build output, split into lines as it arrives.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Which file descriptor a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Ferry's own messages about a build or base preparation (step headers, progress).
    System,
}

impl Stream {
    /// The fd number, as Modal's task logs report it (1 = stdout, 2 = stderr, 3 = system).
    pub fn fd(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
            Stream::System => 3,
        }
    }
}

/// One line of output, without its trailing newline. Lines longer than
/// [`MAX_LINE`] bytes arrive as several `LogLine`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    pub fn system(text: impl Into<String>) -> Self {
        LogLine { stream: Stream::System, text: text.into() }
    }
}

/// Where builds and base preparation send their output. Sending never blocks the build: a
/// dropped receiver just discards lines.
pub type LogSink = mpsc::UnboundedSender<LogLine>;

pub const MAX_LINE: usize = 64 * 1024;

/// Reads `reader` to EOF, sending each line to `tx`.
pub(crate) async fn pump(mut reader: impl AsyncRead + Unpin, stream: Stream, tx: LogSink) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&tx, stream, &pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            emit(&tx, stream, &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&tx, stream, &pending);
    }
}

fn emit(tx: &LogSink, stream: Stream, bytes: &[u8]) {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let _ = tx.send(LogLine { stream, text: String::from_utf8_lossy(bytes).into_owned() });
}

/// The last lines of some output, kept for error messages.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: std::collections::VecDeque<String>,
}

impl Tail {
    pub(crate) const KEEP: usize = 40;

    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == Self::KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    pub(crate) fn text(&self) -> String {
        self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}
