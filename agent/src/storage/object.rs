//! A repository in an object store (S3, Azure Blob, GCS) through the `object_store` crate.
//!
//! The repository layer is blocking; the store's client is async: calls go through a
//! [`Bridge`], a small runtime of the storage's own. Retries with
//! backoff are the client's (`RetryConfig`): 10 tries within 3 minutes for errors worth retrying
//! (connection dropped, 5xx, throttling).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::storage::{Durable, Storage, StorageLock, object_lock};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::bridge::Bridge;

/// A prefix in an object store. Cheap to clone: clones share the client and runtime.
#[derive(Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Without leading or trailing `/`; empty for the whole bucket.
    prefix: String,
    location: String,
    bridge: Bridge,
}

impl ObjectStorage {
    /// Storage under `prefix` of `store`; `location` is its URL for messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: String) -> Result<Self> {
        let bridge = Bridge::new(&location)?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(ObjectStorage { inner: Arc::new(Inner { store, prefix, location, bridge }) })
    }

    fn path(&self, key: &str) -> Result<Path> {
        let full = if self.inner.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.inner.prefix) };
        Path::parse(full.trim_end_matches('/')).map_err(|e| RepoError::Invalid(format!("{key:?} is not a valid object name: {e}")))
    }

    fn url(&self, key: &str) -> String {
        if key.is_empty() { self.inner.location.clone() } else { format!("{}/{key}", self.inner.location.trim_end_matches('/')) }
    }

    /// Runs the request `make()` makes, again after a pause when it fails in a way a new try
    /// may mend (a dropped connection the client did not retry itself), up to [`TRIES`] times.
    /// Every request this is used for is idempotent: chunks are named by their content.
    fn retried<T, F, Fut>(&self, what: &str, make: F) -> std::result::Result<T, object_store::Error>
    where
        T: Send + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, object_store::Error>> + Send + 'static,
    {
        let mut pause = Duration::from_millis(200);
        for attempt in 1.. {
            match self.run(make()) {
                Err(e) if attempt < TRIES && transient(&e) => {
                    tracing::debug!(object = %self.url(what), attempt, error = %e, "object store request failed; trying again");
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                done => return done,
            }
        }
        unreachable!("the loop returns on its last try")
    }

    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.inner.bridge.run(f)
    }

    fn failed(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> RepoError {
        let location = self.url(key);
        move |e| RepoError::Storage { op, location, reason: describe(&e) }
    }
}

/// Tries of one request in [`ObjectStorage::retried`] (the client retries within each).
const TRIES: u32 = 4;

/// Whether a failed request may succeed if sent again: not for answers that will not change
/// (missing object, refused credentials, failed precondition, bad path).
fn transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { .. } => {
            let text = e.to_string();
            !(text.contains("403") || text.contains("401") || text.contains("NoSuchBucket") || text.contains("AuthenticationFailed"))
        }
        _ => false,
    }
}

/// The first line of `text`, without the request details after " - ".
fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or(text);
    line.split(" - ").next().unwrap_or(line)
}

/// The text between `open` and `close` in `text`.
fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    text[start..].find(close).map(|end| &text[start..start + end])
}

/// The store's error, shortened to the store's own code and message when it sent them (S3 and
/// Azure answer XML documents), with what to do about the common ones.
pub(crate) fn describe(e: &object_store::Error) -> String {
    if let object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } = e {
        return format!("the store refused the credentials or their rights ({})", first_line(&e.to_string()));
    }
    let text = e.to_string();
    let code = between(&text, "<Code>", "</Code>");
    let short = match (code, between(&text, "<Message>", "</Message>")) {
        (Some(code), Some(message)) => format!("{code}: {}", message.lines().next().unwrap_or(message)),
        _ => text.clone(),
    };
    match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AuthenticationFailed"
            | "AuthorizationFailure"
            | "AccessDenied"
            | "InvalidToken",
        ) => {
            format!("the store refused the credentials or their rights ({short})")
        }
        Some("NoSuchBucket" | "ContainerNotFound") => format!("the bucket or container does not exist; create it first ({short})"),
        _ => short,
    }
}

impl Storage for ObjectStorage {
    fn location(&self) -> &str {
        &self.inner.location
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (path, store) = (self.path(key)?, self.inner.store.clone());
        let got = self.retried(key, || {
            let (path, store) = (path.clone(), store.clone());
            async move {
                match store.get(&path).await {
                    Ok(r) => r.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        });
        got.map(|b| b.map(|b| b.to_vec())).map_err(self.failed("read", key))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (path, store) = (self.path(key)?, self.inner.store.clone());
        let got = self.retried(key, || {
            let (path, store) = (path.clone(), store.clone());
            async move {
                match store.head(&path).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        });
        got.map_err(self.failed("stat", key))
    }

    fn write(&self, key: &str, bytes: &[u8], _durable: Durable) -> Result<()> {
        let (path, store) = (self.path(key)?, self.inner.store.clone());
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        self.retried(key, || {
            let (path, store, payload) = (path.clone(), store.clone(), payload.clone());
            async move { store.put(&path, payload).await.map(|_| ()) }
        })
        .map_err(self.failed("write", key))
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let (path, store) = (self.path(key)?, self.inner.store.clone());
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        let put = self.run(async move { store.put_opts(&path, payload, opts).await });
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.failed("create", key)(e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let store = self.inner.store.clone();
        let top = if self.inner.prefix.is_empty() { String::new() } else { format!("{}/", self.inner.prefix) };
        let under = if dir.is_empty() { None } else { Some(self.path(dir)?) };
        let listed = self.retried(dir, || {
            let (store, under) = (store.clone(), under.clone());
            async move { store.list(under.as_ref()).try_collect::<Vec<_>>().await }
        });
        let mut out: Vec<(String, u64)> = listed
            .map_err(self.failed("list", dir))?
            .into_iter()
            .filter_map(|meta| meta.location.as_ref().strip_prefix(&top).map(|key| (key.to_string(), meta.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (path, store) = (self.path(key)?, self.inner.store.clone());
        let deleted = self.retried(key, || {
            let (path, store) = (path.clone(), store.clone());
            async move {
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        deleted.map_err(self.failed("remove", key))
    }

    fn check(&self) -> Result<()> {
        let store = self.inner.store.clone();
        let top = if self.inner.prefix.is_empty() { None } else { Some(self.path("")?) };
        let probed = self.retried("", || {
            let (store, top) = (store.clone(), top.clone());
            async move { store.list_with_delimiter(top.as_ref()).await.map(|_| ()) }
        });
        match probed {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(RepoError::Storage {
                op: "open",
                location: self.inner.location.clone(),
                reason: "the bucket or container does not exist; create it first".into(),
            }),
            Err(e) => Err(self.failed("open", "")(e)),
        }
    }

    fn sync(&self) -> Result<()> {
        // A PUT is durable when the store answers it.
        Ok(())
    }

    fn lock(&self, name: &str, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock> {
        object_lock::acquire(Arc::new(self.clone()), name, mode, wait, purpose)
    }
}
