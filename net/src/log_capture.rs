//! A log sink for tests: what a `tracing` subscriber writes, kept in memory, and a way to wait
//! for the next write (`tracing_subscriber::fmt().with_writer(move || capture.clone())`).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Everything written so far; clones share it.
#[derive(Clone, Default)]
pub struct LogCapture {
    text: Arc<Mutex<Vec<u8>>>,
    wrote: Arc<Notify>,
}

impl LogCapture {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits for a write (one that came since the last wait counts).
    pub async fn written(&self) {
        self.wrote.notified().await;
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
        self.wrote.notify_one();
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
