//! Bounded capture of what a guest writes: stdout, stderr and host `log` records share one
//! byte budget per invocation, so a chatty or hostile action cannot grow host memory.
//!
//! Writes past the budget are accepted and dropped (counted), never failed: a guest whose
//! `println!` failed would panic, turning noise into a step failure.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::types::{Diagnostics, LogLevel, LogRecord};

#[derive(Debug)]
struct Inner {
    remaining: u64,
    diagnostics: Diagnostics,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The shared budget and buffers of one invocation.
#[derive(Debug, Clone)]
pub(crate) struct Capture(Arc<Mutex<Inner>>);

#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Capture {
    pub(crate) fn new(budget: u64) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            remaining: budget,
            diagnostics: Diagnostics::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section only appends bytes; a poisoned lock still holds valid data.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_budget(inner: &mut Inner, wanted: usize) -> usize {
        let wanted_u64 = u64::try_from(wanted).unwrap_or(u64::MAX);
        let granted = wanted_u64.min(inner.remaining);
        inner.remaining -= granted;
        inner.diagnostics.dropped_bytes += wanted_u64 - granted;
        usize::try_from(granted).unwrap_or(usize::MAX)
    }

    /// Records a `log` call; returns whether it fit in the budget.
    pub(crate) fn log(&self, level: LogLevel, message: String) -> bool {
        let mut inner = self.lock();
        let granted = Self::take_budget(&mut inner, message.len());
        if granted < message.len() {
            return false;
        }
        inner.diagnostics.logs.push(LogRecord { level, message });
        true
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.lock();
        let granted = Self::take_budget(&mut inner, bytes.len());
        let buf = match stream {
            Stream::Stdout => &mut inner.stdout,
            Stream::Stderr => &mut inner.stderr,
        };
        buf.extend_from_slice(&bytes[..granted]);
    }

    pub(crate) fn stream(&self, stream: Stream) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            stream,
        }
    }

    /// The last `max` bytes of standard error, trimmed, for trap messages.
    pub(crate) fn stderr_tail(&self, max: usize) -> String {
        let inner = self.lock();
        let start = inner.stderr.len().saturating_sub(max);
        String::from_utf8_lossy(&inner.stderr[start..])
            .trim()
            .to_owned()
    }

    /// Everything captured so far.
    pub(crate) fn finish(&self) -> Diagnostics {
        let mut inner = self.lock();
        let mut diagnostics = std::mem::take(&mut inner.diagnostics);
        diagnostics.stdout =
            String::from_utf8_lossy(&std::mem::take(&mut inner.stdout)).into_owned();
        diagnostics.stderr =
            String::from_utf8_lossy(&std::mem::take(&mut inner.stderr)).into_owned();
        diagnostics
    }
}

/// One of the guest's output streams, writing into a [`Capture`].
#[derive(Debug, Clone)]
pub(crate) struct CaptureStream {
    capture: Capture,
    stream: Stream,
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest single write a guest is offered; writes are always accepted.
const WRITE_PERMIT: usize = 64 << 10;

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_budget_are_dropped_and_counted() {
        let capture = Capture::new(10);
        capture.write(Stream::Stdout, b"hello ");
        capture.write(Stream::Stderr, b"world!!");
        assert!(!capture.log(LogLevel::Info, "more".into()));
        let d = capture.finish();
        assert_eq!(d.stdout, "hello ");
        assert_eq!(d.stderr, "worl");
        assert_eq!(d.dropped_bytes, 3 + 4);
        assert!(d.logs.is_empty());
    }
}
