//! Accounting for finished sessions. Owns the promise that no record is
//! lost: every record is first written to a durable spool (one file per
//! record per backend, fsynced) and a worker per backend delivers the spool
//! in order, retrying with back-off while the backend is down. Owns the
//! database and RADIUS backends; knows nothing of sockets to relays or the
//! proxy. The SQL backend (sqlx) is the `database` feature (on by default).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use relaybox_proto::SessionStats;
use tokio::sync::Notify;

#[cfg(feature = "database")]
pub mod database;
pub mod radius;
mod spool;

#[cfg(feature = "database")]
pub use database::{DatabaseBackend, DatabaseSettings};
pub use radius::{RadiusBackend, RadiusSettings};
pub use spool::Spool;

/// Why one delivery failed; the record stays spooled and is retried.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unavailable(String),
}

/// A place records go to.
pub trait Backend: Send + Sync + 'static {
    /// Short name, also the spool sub-directory.
    fn name(&self) -> &str;
    /// Delivers one record. Must be idempotent: after a failure whose
    /// outcome is unknown the same record is delivered again.
    fn deliver<'a>(
        &'a self,
        record: &'a SessionStats,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + 'a>>;

    /// Runs once when accounting starts (the database creates its table
    /// here, as MediaProxy's dispatcher did at start). A failure is logged;
    /// delivery tries again later.
    fn prepare(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// Retry timing for a backend that is down.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

struct Queue {
    /// The backend's name (its spool sub-directory).
    name: String,
    spool: Spool,
    wake: Notify,
}

/// The accounting front: `record` spools, workers deliver.
#[derive(Clone)]
pub struct Accounting {
    queues: Arc<Vec<Arc<Queue>>>,
}

impl Accounting {
    /// Opens (creating if needed) `spool_dir/<backend>` for each backend and
    /// starts one delivery task per backend on the current tokio runtime.
    /// Records left in the spool by an earlier run are delivered first.
    /// At most `max_spooled` records wait per backend; beyond, `record`
    /// logs the record (as JSON) instead of spooling it.
    pub fn start(
        spool_dir: &Path,
        backends: Vec<Arc<dyn Backend>>,
        retry: Retry,
        max_spooled: usize,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        for backend in backends {
            let spool = Spool::open(spool_dir.join(backend.name()), max_spooled)?;
            let pending = spool.held();
            if pending > 0 {
                tracing::info!(backend = backend.name(), pending, "accounting: records left in the spool, delivering");
            }
            let queue = Arc::new(Queue { name: backend.name().to_string(), spool, wake: Notify::new() });
            tokio::spawn(deliver(queue.clone(), backend, retry));
            queues.push(queue);
        }
        Ok(Accounting { queues: Arc::new(queues) })
    }

    /// No backend configured.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Spools one record for every backend. Returns once it is on disk.
    pub fn record(&self, stats: &SessionStats) {
        let json = stats.to_json();
        for q in self.queues.iter() {
            match q.spool.push(&json) {
                Ok(_) => q.wake.notify_one(),
                Err(e) => tracing::error!(
                    call_id = %stats.call_id,
                    spool = %q.spool.dir().display(),
                    "accounting: cannot spool the record ({e}); it is only in this log line: {json}"
                ),
            }
        }
    }

    /// Records not delivered yet, over all backends.
    pub fn pending(&self) -> usize {
        self.queues.iter().map(|q| q.spool.held()).sum()
    }

    /// Records not delivered yet, per backend (by name), in the order the
    /// backends were configured.
    pub fn pending_by_backend(&self) -> Vec<(String, usize)> {
        self.queues.iter().map(|q| (q.name.clone(), q.spool.held())).collect()
    }

    /// The spool directories, for status output.
    pub fn spool_dirs(&self) -> Vec<PathBuf> {
        self.queues.iter().map(|q| q.spool.dir().to_path_buf()).collect()
    }
}

async fn deliver(queue: Arc<Queue>, backend: Arc<dyn Backend>, retry: Retry) {
    if let Err(e) = backend.prepare().await {
        tracing::warn!(
            backend = backend.name(),
            "accounting: not ready at start, will retry with the first record: {e}"
        );
    }
    let mut delay = retry.first;
    let mut failing = false;
    loop {
        let pending = match queue.spool.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(backend = backend.name(), "accounting: cannot read the spool: {e}");
                tokio::time::sleep(retry.max).await;
                continue;
            }
        };
        if pending.is_empty() {
            // A record spooled between the listing and here has notified
            // already; notify_one keeps that permit, so nothing is missed.
            let _ = tokio::time::timeout(Duration::from_secs(5), queue.wake.notified()).await;
            continue;
        }
        for path in pending {
            let record = match queue.spool.read(&path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(backend = backend.name(), file = %path.display(), "accounting: unreadable spool file set aside: {e}");
                    queue.spool.set_aside(&path);
                    continue;
                }
            };
            match backend.deliver(&record).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(backend = backend.name(), "accounting: backend is back, delivering the spool");
                        failing = false;
                    }
                    delay = retry.first;
                    queue.spool.done(&path);
                    tracing::debug!(backend = backend.name(), call_id = %record.call_id, "accounting: delivered");
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(backend = backend.name(), call_id = %record.call_id, "accounting: backend down, records stay spooled: {e}");
                    }
                    failing = true;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(retry.max);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    pub(crate) fn stats(call_id: &str) -> SessionStats {
        SessionStats {
            call_id: call_id.into(),
            from_tag: "f".into(),
            from_uri: "sip:a@x".into(),
            to_tag: Some("t".into()),
            to_uri: "sip:b@x".into(),
            start_time: Some(1_700_000_000.0),
            duration: 5,
            caller_ua: "A".into(),
            callee_ua: "B".into(),
            username: None,
            relay_ip: Some("203.0.113.1".into()),
            dialog_id: None,
            timed_out: None,
            all_streams_ice: None,
            streams: vec![],
        }
    }

    /// Fails its first `fail` deliveries, then records what it gets.
    struct Flaky {
        fail: AtomicUsize,
        got: Mutex<Vec<String>>,
    }

    impl Backend for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn deliver<'a>(
            &'a self,
            record: &'a SessionStats,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send + 'a>> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) > 0 {
                    self.fail.fetch_sub(1, Ordering::SeqCst);
                    return Err(BackendError::Unavailable("down".into()));
                }
                self.got.lock().unwrap().push(record.call_id.clone());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_backend_that_is_down_loses_nothing_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(Flaky { fail: AtomicUsize::new(5), got: Mutex::new(vec![]) });
        let retry = Retry { first: Duration::from_millis(5), max: Duration::from_millis(20) };
        let acc = Accounting::start(dir.path(), vec![backend.clone()], retry, 1000).unwrap();
        for i in 0..20 {
            acc.record(&stats(&format!("c{i}")));
        }
        for _ in 0..400 {
            if backend.got.lock().unwrap().len() == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = backend.got.lock().unwrap().clone();
        assert_eq!(got, (0..20).map(|i| format!("c{i}")).collect::<Vec<_>>());
        assert_eq!(acc.pending(), 0);
    }

    #[tokio::test]
    async fn a_full_spool_logs_further_records_and_delivers_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(Flaky { fail: AtomicUsize::new(usize::MAX), got: Mutex::new(vec![]) });
        let retry = Retry { first: Duration::from_millis(5), max: Duration::from_millis(20) };
        let acc = Accounting::start(dir.path(), vec![backend.clone()], retry, 3).unwrap();
        for i in 0..5 {
            acc.record(&stats(&format!("c{i}")));
        }
        assert_eq!(acc.pending(), 3, "the spool stops at spool_max_records");
        assert_eq!(acc.pending_by_backend(), [("flaky".to_string(), 3)]);
        backend.fail.store(0, Ordering::SeqCst);
        for _ in 0..400 {
            if acc.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.got.lock().unwrap().clone(), ["c0", "c1", "c2"]);
        // Room again: the next record is spooled and delivered.
        acc.record(&stats("c5"));
        for _ in 0..400 {
            if backend.got.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.got.lock().unwrap().last().map(String::as_str), Some("c5"));
    }

    #[tokio::test]
    async fn records_spooled_by_an_earlier_run_are_delivered_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("flaky"), 1000).unwrap();
        spool.push(&stats("left-over").to_json()).unwrap();
        std::fs::write(dir.path().join("flaky").join("00000000000000000001-000000.json"), "{broken").unwrap();
        let backend = Arc::new(Flaky { fail: AtomicUsize::new(0), got: Mutex::new(vec![]) });
        let _acc = Accounting::start(dir.path(), vec![backend.clone()], Retry::default(), 1000).unwrap();
        for _ in 0..200 {
            if !backend.got.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.got.lock().unwrap().clone(), vec!["left-over".to_string()]);
        let bad: Vec<_> = std::fs::read_dir(dir.path().join("flaky"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bad"))
            .collect();
        assert_eq!(bad.len(), 1, "the broken file is set aside, not retried forever");
    }
}
