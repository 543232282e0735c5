//! Blocking calls over async clients: a small tokio runtime owned by a storage backend. A call
//! spawns its future there and waits on a channel, so it works from any thread (the export's
//! scoped workers, the CLI, a blocking pool) and never panics inside another runtime.

use std::future::Future;

use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;

/// A runtime of a backend's own; shut down in the background when dropped (which may happen on
/// an async task, where a blocking shutdown would panic).
pub struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    /// A 2-thread runtime named after `what`.
    pub fn new(what: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storage-client")
            .enable_all()
            .build()
            .map_err(|e| RepoError::Invalid(format!("cannot start the client for {what}: {e}")))?;
        Ok(Bridge { runtime: Some(runtime) })
    }

    /// Starts `f` on the bridge's runtime without waiting (wait with [`Bridge::run`] on the
    /// handle).
    pub fn spawn<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> tokio::task::JoinHandle<T> {
        self.runtime.as_ref().expect("the runtime is taken only on drop").spawn(f)
    }

    /// Runs `f` on the bridge's runtime and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().expect("the runtime is taken only on drop");
        runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the storage runtime outlives its calls")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
