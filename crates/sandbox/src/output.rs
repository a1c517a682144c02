//! Output of a sandbox process, addressed by byte offset so a reader that reconnects resumes
//! where it stopped (the client re-sends its offset after every retry).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// What happens when output piles up unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Keep the newest `cap` bytes and drop older ones: a sandbox's main process must never
    /// block because nobody reads its logs.
    DropOldest,
    /// Make the writer wait until the reader has taken data (an exec's pipe, or a large file
    /// streamed to `copy_to_local`): memory stays bounded by `cap`.
    Block,
}

/// An append-only byte stream with a bounded window kept in memory.
pub(crate) struct OutputBuffer {
    state: Mutex<State>,
    changed: Notify,
    cap: usize,
    overflow: Overflow,
}

struct State {
    /// Chunks with the stream offset of their first byte.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte still held.
    base: u64,
    /// Offset one past the last byte written.
    end: u64,
    closed: bool,
}

/// One read: `start` may be later than asked for when older bytes were dropped.
pub(crate) enum Read {
    Data { start: u64, data: Bytes },
    Eof,
}

impl OutputBuffer {
    pub(crate) fn new(cap: usize, overflow: Overflow) -> Self {
        OutputBuffer {
            state: Mutex::new(State { chunks: VecDeque::new(), base: 0, end: 0, closed: false }),
            changed: Notify::new(),
            cap,
            overflow,
        }
    }

    /// Appends `data`; with [`Overflow::Block`] waits while the window is full.
    pub(crate) async fn push(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                let held = (s.end - s.base) as usize;
                if self.overflow == Overflow::DropOldest || held < self.cap || s.closed {
                    let start = s.end;
                    s.end += data.len() as u64;
                    s.chunks.push_back((start, data));
                    if self.overflow == Overflow::DropOldest {
                        while (s.end - s.base) as usize > self.cap && s.chunks.len() > 1 {
                            let (_, c) = s.chunks.pop_front().expect("non-empty");
                            s.base += c.len() as u64;
                        }
                    }
                    drop(s);
                    self.changed.notify_waiters();
                    return;
                }
            }
            notified.await;
        }
    }

    /// No more data will come.
    pub(crate) fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_waiters();
    }

    /// Waits for data at or after `offset` (up to `max` bytes), or the end of the stream.
    pub(crate) async fn read(&self, offset: u64, max: usize) -> Read {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_read(offset, max) {
                return r;
            }
            notified.await;
        }
    }

    fn try_read(&self, offset: u64, max: usize) -> Option<Read> {
        let s = self.state.lock().unwrap();
        let offset = offset.max(s.base);
        if offset >= s.end {
            return s.closed.then_some(Read::Eof);
        }
        let mut out = Vec::new();
        let mut start = None;
        for (chunk_start, chunk) in &s.chunks {
            let chunk_end = chunk_start + chunk.len() as u64;
            let from = start.map(|_| *chunk_start).unwrap_or(offset);
            if chunk_end <= from {
                continue;
            }
            let piece = chunk.slice((from - chunk_start) as usize..);
            if start.is_none() {
                start = Some(from);
                if piece.len() >= max {
                    return Some(Read::Data { start: from, data: piece.slice(..max) });
                }
            }
            if out.len() + piece.len() > max {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Some(Read::Data { start: start.unwrap_or(offset), data: Bytes::from(out) })
    }

    /// Closed and nothing left to read (with [`Overflow::Block`], once consumed).
    pub(crate) fn is_drained(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.closed && s.chunks.is_empty()
    }

    /// The reader has everything before `offset`: with [`Overflow::Block`] that room is freed.
    pub(crate) fn consumed(&self, offset: u64) {
        if self.overflow != Overflow::Block {
            return;
        }
        let mut s = self.state.lock().unwrap();
        while let Some((start, c)) = s.chunks.front() {
            if start + c.len() as u64 > offset {
                break;
            }
            let n = c.len() as u64;
            s.chunks.pop_front();
            s.base += n;
        }
        drop(s);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_resume_by_offset_and_ring_drops_oldest() {
        let b = OutputBuffer::new(8, Overflow::DropOldest);
        b.push(Bytes::from_static(b"hello ")).await;
        b.push(Bytes::from_static(b"world")).await;
        // 11 bytes written into an 8-byte window: the first chunk is gone.
        match b.read(0, 100).await {
            Read::Data { start, data } => {
                assert_eq!(start, 6);
                assert_eq!(&data[..], b"world");
            }
            Read::Eof => panic!("eof"),
        }
        match b.read(8, 100).await {
            Read::Data { start, data } => assert_eq!((start, &data[..]), (8, &b"rld"[..])),
            Read::Eof => panic!("eof"),
        }
        b.close();
        assert!(matches!(b.read(11, 100).await, Read::Eof));
    }

    #[tokio::test]
    async fn blocking_writer_waits_for_the_reader() {
        let b = std::sync::Arc::new(OutputBuffer::new(4, Overflow::Block));
        b.push(Bytes::from_static(b"abcd")).await;
        let writer = {
            let b = b.clone();
            tokio::spawn(async move { b.push(Bytes::from_static(b"efgh")).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "the window is full");
        let Read::Data { data, .. } = b.read(0, 2).await else { panic!() };
        assert_eq!(&data[..], b"ab");
        b.consumed(4);
        writer.await.unwrap();
        let Read::Data { start, data } = b.read(4, 100).await else { panic!() };
        assert_eq!((start, &data[..]), (4, &b"efgh"[..]));
    }
}
