//! The dispatcher: answers the proxy module on a UNIX socket, forwards each
//! request to a relay over the TLS link, keeps which relay holds which call,
//! accounts finished sessions, and serves the management port and (with
//! `metrics_listen`) the Prometheus exporter (`metrics.rs`).
//!
//! Trust: a relay is believed only about the calls it holds. Its `expired`
//! reports, `remove` answers and `sessions` lists are checked against the
//! dispatcher's own record of who holds each call (see [`Claim`]); a dialog is
//! ended with the dialog id the *module* gave, never the relay's; anything
//! else is refused and logged (rate-limited per relay, see [`Refusals`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::seq::SliceRandom;
use relaybox_accounting::{Accounting, Backend, Retry};
use relaybox_config::{AccountingBackend, Config};
use relaybox_limits::DescriptorBudget;
use relaybox_proto::link::{LinkRequest, UpdateReply};
use relaybox_proto::module::{ModuleFrame, ModuleReply, ModuleRequest, RemoveRequest, UpdateRequest};
use relaybox_proto::{SessionStats, Summary};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod dialogs;
mod management;
mod metrics;
mod module_socket;
mod relay_link;

use metrics::{Attempt, Metrics};

/// One connected relay as the dispatcher sees it.
#[derive(Clone)]
pub(crate) struct RelayHandle {
    pub id: u64,
    /// The peer address of the relay's TLS connection (for logs).
    pub ip: std::net::IpAddr,
    /// The address the relay puts in its replies, from its `summary`: the
    /// one media goes to. Several relays may share one host address.
    pub media_ip: Arc<std::sync::OnceLock<std::net::IpAddr>>,
    pub subject: String,
    /// Certificate serial, to drop the link if a reloaded CRL revokes it.
    pub serial: String,
    /// Closes the link.
    pub close: Arc<tokio::sync::Notify>,
    pub tx: mpsc::UnboundedSender<LinkCall>,
    pub halting: Arc<std::sync::atomic::AtomicBool>,
    /// Reports of this relay refused so far, for rate-limited logging.
    pub refusals: Arc<Mutex<Refusals>>,
}

/// Refused reports of one relay: the first `refusal_log_limit` of each
/// minute are logged one by one, the rest counted and logged as one line at
/// the end of the minute (or when the relay disconnects).
#[derive(Debug)]
pub(crate) struct Refusals {
    window_start: Instant,
    logged: u32,
    unlogged: u64,
}

impl Refusals {
    pub fn new(now: Instant) -> Self {
        Refusals { window_start: now, logged: 0, unlogged: 0 }
    }

    /// Whether this refusal gets a log line of its own.
    fn admit(&mut self, now: Instant, limit: u32, relay: &RelayHandle) -> bool {
        if now.duration_since(self.window_start) >= REFUSAL_WINDOW {
            self.flush(relay);
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged < limit {
            self.logged += 1;
            true
        } else {
            self.unlogged += 1;
            false
        }
    }

    /// Logs how many refusals went unlogged since the last time.
    pub fn flush(&mut self, relay: &RelayHandle) {
        if self.unlogged > 0 {
            tracing::warn!(
                relay = %relay.ip,
                subject = %relay.subject,
                refused = self.unlogged,
                "refused {} more reports from this relay without logging each (refusal_log_limit)",
                self.unlogged
            );
            self.unlogged = 0;
        }
    }
}

/// The period of [`Refusals`].
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// Whether a relay holds a call, by the dispatcher's record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// The relay holds it (now, or it held it before it reconnected: same
    /// certificate subject, and no other connection took it meanwhile).
    Own,
    /// Another relay holds it; the text names that relay.
    Foreign(String),
    /// The dispatcher has no record of the call.
    Unknown,
}

/// A command for a relay's link task, with where to send the answer.
pub(crate) struct LinkCall {
    pub request: LinkRequest,
    pub reply: oneshot::Sender<String>,
    /// A `sessions` whose answer the link task adopts before it reads the
    /// relay's next line (an `expired` that follows must find the call).
    pub adopt: bool,
}

#[derive(Debug, Clone)]
struct SessionEntry {
    relay_id: u64,
    /// The holder's certificate subject: a relay that reconnects (a restart)
    /// under the same subject takes its calls back.
    relay_subject: String,
    /// The dialog id from the module's requests: the only one used to end the
    /// dialog (unless `end_adopted_dialogs`, see `claimed_dialog_id`).
    dialog_id: Option<String>,
    /// The dialog id a relay's `sessions` list named when the call was
    /// adopted (after a dispatcher restart), not confirmed by the module.
    claimed_dialog_id: Option<String>,
    /// Since when the relay holding the call has been disconnected.
    orphaned_since: Option<Instant>,
    /// The call expired on its relay and the proxy was asked to end the
    /// dialog: the entry waits for that BYE (`removed`, as MediaProxy's
    /// dispatcher answers it) at most `cleanup_expired_sessions_after`.
    dialog_ended_at: Option<Instant>,
}

impl SessionEntry {
    fn new(relay: &RelayHandle, dialog_id: Option<String>) -> Self {
        SessionEntry {
            relay_id: relay.id,
            relay_subject: relay.subject.clone(),
            dialog_id,
            claimed_dialog_id: None,
            orphaned_since: None,
            dialog_ended_at: None,
        }
    }
}

/// Shared dispatcher state.
pub(crate) struct Dispatcher {
    pub config: Config,
    accounting: Accounting,
    dialogs: Arc<dialogs::DialogCloser>,
    relays: Mutex<Vec<RelayHandle>>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    next_relay_id: std::sync::atomic::AtomicU64,
    /// What the Prometheus exporter reports (`[Dispatcher] metrics_listen`).
    pub metrics: Metrics,
}

#[derive(Debug)]
pub(crate) enum RelayCallError {
    Gone,
    Timeout,
}

/// The configured accounting backends, each behind its own spool.
fn accounting(config: &Config) -> anyhow::Result<Accounting> {
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    for backend in &config.dispatcher.accounting {
        match backend {
            #[cfg(feature = "accounting-sql")]
            AccountingBackend::Database => {
                use relaybox_accounting::{DatabaseBackend, DatabaseSettings};
                let db = &config.database;
                let dburi = db.dburi.clone().context("accounting = database, but [Database] dburi is not set")?;
                let settings = DatabaseSettings {
                    dburi,
                    sessions_table: db.sessions_table.clone(),
                    callid_column: db.callid_column.clone(),
                    fromtag_column: db.fromtag_column.clone(),
                    totag_column: db.totag_column.clone(),
                    info_column: db.info_column.clone(),
                };
                let backend = DatabaseBackend::new(settings).map_err(|e| anyhow::anyhow!("[Database] {e}"))?;
                backends.push(Arc::new(backend));
            }
            #[cfg(not(feature = "accounting-sql"))]
            AccountingBackend::Database => anyhow::bail!(
                "[Dispatcher] accounting = database, but this relaybox was built without SQL accounting \
                 (cargo feature accounting-sql; Buildroot: BR2_PACKAGE_RELAYBOX_ACCOUNTING_SQL)"
            ),
            AccountingBackend::Radius => {
                let r = &config.radius;
                let backend =
                    relaybox_accounting::RadiusBackend::from_config(&r.config_file, r.additional_dictionary.as_deref())
                        .map_err(|e| anyhow::anyhow!("[Radius] {e}"))?;
                backends.push(Arc::new(backend));
            }
        }
    }
    let spool = &config.dispatcher.spool_dir;
    Accounting::start(spool, backends, Retry::default(), config.dispatcher.spool_max_records)
        .with_context(|| format!("accounting spool {}", spool.display()))
}

impl RelayHandle {
    /// The relay's media address, or its connection address until known.
    pub fn address(&self) -> std::net::IpAddr {
        self.media_ip.get().copied().unwrap_or(self.ip)
    }
}

impl Dispatcher {
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Dispatcher {
            accounting: accounting(&config)?,
            dialogs: Arc::new(dialogs::DialogCloser::new(&config.opensips)?),
            config,
            relays: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_relay_id: std::sync::atomic::AtomicU64::new(1),
            metrics: Metrics::new(),
        }))
    }

    pub fn new_relay_id(&self) -> u64 {
        self.next_relay_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn add_relay(&self, relay: RelayHandle) {
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).push(relay);
    }

    pub fn remove_relay(&self, id: u64) {
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r.id != id);
    }

    pub fn relays(&self) -> Vec<RelayHandle> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn relay(&self, id: u64) -> Option<RelayHandle> {
        self.relays().into_iter().find(|r| r.id == id)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one command to one relay and waits at most `timeout`.
    pub async fn call(
        &self,
        relay: &RelayHandle,
        request: LinkRequest,
        timeout: Duration,
    ) -> Result<String, RelayCallError> {
        self.send_call(relay, request, timeout, false).await
    }

    /// `sessions`, whose answer the link task adopts (see [`LinkCall::adopt`]).
    pub async fn sessions_to_adopt(&self, relay: &RelayHandle, timeout: Duration) -> Result<String, RelayCallError> {
        self.send_call(relay, LinkRequest::Sessions, timeout, true).await
    }

    async fn send_call(
        &self,
        relay: &RelayHandle,
        request: LinkRequest,
        timeout: Duration,
        adopt: bool,
    ) -> Result<String, RelayCallError> {
        let (tx, rx) = oneshot::channel();
        relay.tx.send(LinkCall { request, reply: tx, adopt }).map_err(|_| RelayCallError::Gone)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(RelayCallError::Gone),
            Err(_) => Err(RelayCallError::Timeout),
        }
    }

    /// The whole budget for one module request: the module gives up after
    /// `module_timeout`, so answer `error` a little before that.
    fn module_deadline(&self) -> Instant {
        let budget = self.config.dispatcher.module_timeout;
        let margin = (budget / 10).max(Duration::from_millis(20)).min(budget / 2);
        Instant::now() + (budget - margin)
    }

    /// Answers one module request; the relay gets the module's own lines
    /// (`frame.lines`), the decisions here use the parsed request.
    pub async fn handle_module_request(&self, frame: ModuleFrame) -> ModuleReply {
        match &frame.request {
            ModuleRequest::Update(u) => self.handle_update(u, &frame).await,
            ModuleRequest::Remove(r) => self.handle_remove(r, &frame).await,
        }
    }

    /// Relays to try for an update, in order: the one holding the call, the
    /// preferred one, then the rest in random order.
    fn candidates(&self, update: &UpdateRequest) -> Vec<RelayHandle> {
        let relays = self.relays();
        let holder = {
            let mut table = self.sessions();
            // A call whose dialog was ended after it expired is new again.
            if table.get(&update.call_id).is_some_and(|e| e.dialog_ended_at.is_some()) {
                table.remove(&update.call_id);
            }
            table.get(&update.call_id).map(|e| e.relay_id)
        };
        if let Some(id) = holder {
            if let Some(r) = relays.iter().find(|r| r.id == id) {
                return vec![r.clone()];
            }
            // The relay that had the call is gone: its media is gone with it,
            // so a new offer may as well land on another relay.
            tracing::info!(call_id = %update.call_id, "the relay holding the call is disconnected; choosing another");
            self.sessions().remove(&update.call_id);
        }
        let mut active: Vec<RelayHandle> =
            relays.into_iter().filter(|r| !r.halting.load(std::sync::atomic::Ordering::Relaxed)).collect();
        active.shuffle(&mut rand::thread_rng());
        if let Some(pref) = update.media_relay.as_deref().and_then(|p| p.parse::<std::net::IpAddr>().ok()) {
            active.sort_by_key(|r| r.address() != pref);
        }
        active
    }

    async fn handle_update(&self, update: &UpdateRequest, frame: &ModuleFrame) -> ModuleReply {
        let deadline = self.module_deadline();
        let call_id = update.call_id.clone();
        let candidates = self.candidates(update);
        if candidates.is_empty() {
            self.metrics.update_without_relay();
            tracing::warn!(call_id = %call_id, "update: no relay available; the proxy leaves the SDP as it is");
            return ModuleReply::Error;
        }
        for relay in candidates {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(call_id = %call_id, "update: module time budget spent, answering error");
                break;
            }
            let wait = (deadline - now).min(self.config.dispatcher.relay_timeout);
            let answer = self.call(&relay, LinkRequest::Module(frame.clone()), wait).await;
            let reply = match answer {
                Ok(payload) => UpdateReply::parse(&payload),
                Err(e) => {
                    self.metrics.relay_attempt(match e {
                        RelayCallError::Gone => Attempt::Gone,
                        RelayCallError::Timeout => Attempt::Timeout,
                    });
                    tracing::warn!(call_id = %call_id, relay = %relay.ip, "update: relay did not answer ({e:?}), trying the next");
                    continue;
                }
            };
            self.metrics.relay_attempt(match &reply {
                Ok(UpdateReply::Ports(_) | UpdateReply::NoMedia) => Attempt::Ports,
                Ok(UpdateReply::Halting) => Attempt::Halting,
                Ok(UpdateReply::Error) => Attempt::Error,
                Err(_) => Attempt::BadAnswer,
            });
            let answer = match &reply {
                Ok(UpdateReply::Ports(ports)) => Some(ModuleReply::Ports(ports.clone())),
                // MediaProxy's dispatcher keeps the call on that relay too.
                Ok(UpdateReply::NoMedia) => Some(ModuleReply::NoMedia),
                _ => None,
            };
            if let Some(answer) = answer {
                let mut table = self.sessions();
                let entry = table.entry(call_id.clone()).or_insert_with(|| SessionEntry::new(&relay, None));
                if entry.relay_id != relay.id {
                    // The call is on this relay now (its holder went away).
                    entry.relay_id = relay.id;
                    entry.relay_subject = relay.subject.clone();
                    entry.orphaned_since = None;
                }
                // The module's dialog id is the one to trust.
                if update.dialog_id.is_some() {
                    entry.dialog_id = update.dialog_id.clone();
                }
                drop(table);
                tracing::debug!(call_id = %call_id, relay = %relay.ip, reply = %answer.encode().trim_end(), "update relayed");
                return answer;
            }
            match reply {
                Ok(UpdateReply::Ports(_) | UpdateReply::NoMedia) => {}
                Ok(UpdateReply::Halting) => {
                    tracing::info!(call_id = %call_id, relay = %relay.ip, "relay is halting, trying the next");
                    relay.halting.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(UpdateReply::Error) => {
                    tracing::warn!(call_id = %call_id, relay = %relay.ip, "relay answered error, trying the next");
                }
                Err(e) => {
                    tracing::warn!(call_id = %call_id, relay = %relay.ip, "relay sent a bad update answer: {e}");
                }
            }
        }
        ModuleReply::Error
    }

    /// Answers as MediaProxy's dispatcher does: `removed` once the relay
    /// returned the call's statistics, `error` for a call no relay holds (a
    /// second remove, a CANCEL after the call ended), a relay that is gone,
    /// answers `error` or does not answer in time. The module reads none of
    /// it.
    async fn handle_remove(&self, remove: &RemoveRequest, frame: &ModuleFrame) -> ModuleReply {
        let call_id = remove.call_id.clone();
        let entry = self.sessions().get(&call_id).cloned();
        let Some(entry) = entry else {
            tracing::info!(call_id = %call_id, "remove for a call no relay holds, answering error");
            return ModuleReply::Error;
        };
        if entry.dialog_ended_at.is_some() {
            // The BYE of a call that expired and whose dialog we ended.
            self.sessions().remove(&call_id);
            return ModuleReply::Removed;
        }
        let Some(relay) = self.relay(entry.relay_id) else {
            tracing::warn!(call_id = %call_id, "remove: the relay holding the call is not connected");
            self.sessions().remove(&call_id);
            return ModuleReply::Error;
        };
        let wait = self.module_deadline().saturating_duration_since(Instant::now());
        match self.call(&relay, LinkRequest::Module(frame.clone()), wait.max(Duration::from_millis(50))).await {
            Ok(payload) if payload.trim() == "error" => {
                tracing::warn!(call_id = %call_id, relay = %relay.ip, "relay answered error to remove");
                self.sessions().remove(&call_id);
                ModuleReply::Error
            }
            Ok(payload) => {
                match SessionStats::from_json(&payload) {
                    Ok(stats) => self.removed(&relay, &call_id, stats),
                    Err(e) => {
                        tracing::error!(call_id = %call_id, relay = %relay.ip, "remove: bad statistics from relay: {e}: {payload}");
                        self.sessions().remove(&call_id);
                    }
                }
                ModuleReply::Removed
            }
            Err(e) => {
                // The relay may still answer later; its link task accounts
                // late answers too (see relay_link), so nothing is lost.
                tracing::warn!(call_id = %call_id, relay = %relay.ip, "remove: relay did not answer in time ({e:?})");
                ModuleReply::Error
            }
        }
    }

    /// Who holds `call_id` as far as `relay` is concerned. A relay that
    /// reconnected under the subject of the call's holder, while that holder
    /// is disconnected, takes the call back (the entry moves to it).
    fn claim(&self, relay: &RelayHandle, call_id: &str) -> Claim {
        let connected: Vec<(u64, String)> = self.relays().iter().map(|r| (r.id, r.subject.clone())).collect();
        let mut table = self.sessions();
        let Some(entry) = table.get_mut(call_id) else { return Claim::Unknown };
        if entry.relay_id == relay.id {
            return Claim::Own;
        }
        if let Some((_, subject)) = connected.iter().find(|(id, _)| *id == entry.relay_id) {
            return Claim::Foreign(format!("the connected relay {subject}"));
        }
        if entry.relay_subject == relay.subject {
            entry.relay_id = relay.id;
            entry.orphaned_since = None;
            return Claim::Own;
        }
        Claim::Foreign(format!("the disconnected relay {}", entry.relay_subject))
    }

    /// Logs a refused report of `relay` (rate-limited per relay).
    fn refuse(&self, relay: &RelayHandle, call_id: &str, what: &str, reason: &str) {
        self.metrics.report_refused();
        let limit = self.config.dispatcher.refusal_log_limit;
        let mut refusals = relay.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if refusals.admit(Instant::now(), limit, relay) {
            tracing::warn!(
                relay = %relay.ip,
                subject = %relay.subject,
                call_id = %call_id,
                "refused {what} from a relay: {reason}"
            );
        }
    }

    /// The relay answered `remove` of `call_id` with `stats`.
    pub fn removed(&self, relay: &RelayHandle, call_id: &str, stats: SessionStats) {
        if stats.call_id != call_id {
            self.refuse(
                relay,
                call_id,
                "a remove answer",
                &format!("it carries the statistics of another call ({:?}); not accounted", stats.call_id),
            );
            // The module removed the call all the same.
            if self.claim(relay, call_id) == Claim::Own {
                self.sessions().remove(call_id);
            }
            return;
        }
        self.session_finished(relay, stats, false);
    }

    /// A session ended on a relay (removed or expired): account it once, and
    /// for `expired` end its dialog, only if the relay holds the call.
    pub fn session_finished(&self, relay: &RelayHandle, mut stats: SessionStats, expired: bool) {
        let what = if expired { "an expired report" } else { "a remove answer" };
        match self.claim(relay, &stats.call_id) {
            Claim::Own => {}
            Claim::Foreign(holder) => {
                let reason = format!("the call is held by {holder}; not accounted, no dialog ended");
                return self.refuse(relay, &stats.call_id, what, &reason);
            }
            Claim::Unknown => {
                let reason = "the dispatcher knows no such call of this relay; not accounted, no dialog ended";
                return self.refuse(relay, &stats.call_id, what, reason);
            }
        }
        let Some(entry) = self.sessions().remove(&stats.call_id) else { return };
        if entry.dialog_ended_at.is_some() {
            // Accounted already, its dialog ended: it only waits for the BYE.
            self.sessions().insert(stats.call_id.clone(), entry);
            return self.refuse(relay, &stats.call_id, what, "the call was accounted already; not accounted again");
        }
        if stats.relay_ip.is_none() {
            stats.relay_ip = Some(relay.address().to_string());
        }
        // The module's dialog id, not the relay's (which may name another call).
        let relays_dialog = stats.dialog_id.take();
        stats.dialog_id = entry.dialog_id.clone().or_else(|| entry.claimed_dialog_id.clone()).or(relays_dialog);
        // What MediaProxy's dispatcher adds for its accounting.
        let all_ice = stats.all_streams_unselected_ice();
        stats.timed_out = Some(expired && !all_ice);
        stats.all_streams_ice = expired.then_some(all_ice);
        let how = if expired { "expired" } else { "removed" };
        tracing::info!(call_id = %stats.call_id, relay = %relay.ip, "session {how} and accounted: {}", stats.to_json());
        self.accounting.record(&stats);
        self.metrics.session_accounted(expired);
        if !expired {
            return;
        }
        let dialog = match (&entry.dialog_id, &entry.claimed_dialog_id) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(claimed)) if self.config.dispatcher.end_adopted_dialogs => Some(claimed.clone()),
            (None, Some(claimed)) => {
                tracing::info!(
                    call_id = %stats.call_id,
                    dialog_id = %claimed,
                    "not ending the dialog: its id comes from the relay's list (adopted call) and no module \
                     request confirmed it (end_adopted_dialogs = no)"
                );
                None
            }
            (None, None) => None,
        };
        // The media of an answered call timed out but nobody sent BYE: ask
        // the proxy to end the dialog. Calls without the dialog module,
        // calls never answered and calls whose streams all ended as
        // unselected ICE candidates (the phones talk directly) are only
        // accounted.
        let Some(dialog_id) = dialog.filter(|_| stats.start_time.is_some() && !all_ice) else { return };
        // Kept for the BYE the proxy is about to send (answered `removed`,
        // as MediaProxy's dispatcher does).
        let mut entry = entry;
        entry.dialog_ended_at = Some(Instant::now());
        self.sessions().insert(stats.call_id.clone(), entry);
        self.end_dialog(dialog_id, stats.call_id.clone());
    }

    /// Asks the proxy to end the dialog of an expired call.
    fn end_dialog(&self, dialog_id: String, call_id: String) {
        let closer = self.dialogs.clone();
        let ended = self.metrics.dialogs_ended();
        tokio::spawn(async move {
            match closer.end(&dialog_id).await {
                Ok(ended_with) => {
                    ended.count(true);
                    tracing::info!(
                        call_id = %call_id,
                        dialog_id = %dialog_id,
                        sent = %ended_with.sent,
                        "dialog ended by the proxy: {}",
                        ended_with.answer
                    )
                }
                Err(e) => {
                    ended.count(false);
                    tracing::warn!(call_id = %call_id, dialog_id = %dialog_id, "could not end the dialog: {e}")
                }
            }
        });
    }

    /// A relay (re)connected and listed the sessions it holds. Calls no
    /// other relay holds are adopted (the dispatcher restarted, or the relay
    /// did); a call held by another relay is refused and stays where it is.
    /// An adopted call's dialog id is the relay's claim: it ends the dialog
    /// only once a module request confirms it, or with `end_adopted_dialogs`.
    pub fn adopt_sessions(&self, relay: &RelayHandle, sessions: Vec<SessionStats>) -> (usize, usize) {
        let (mut adopted, mut refused) = (0, 0);
        for s in sessions {
            match self.claim(relay, &s.call_id) {
                Claim::Own => adopted += 1,
                Claim::Unknown => {
                    let mut entry = SessionEntry::new(relay, None);
                    entry.claimed_dialog_id = s.dialog_id.clone();
                    self.sessions().insert(s.call_id.clone(), entry);
                    adopted += 1;
                }
                Claim::Foreign(holder) => {
                    refused += 1;
                    let reason = format!("the call is held by {holder}; it stays there");
                    self.refuse(relay, &s.call_id, "a listed session", &reason);
                }
            }
        }
        (adopted, refused)
    }

    /// Logs the refusals of connected relays not logged one by one.
    fn flush_refusals(&self) {
        for relay in self.relays() {
            relay.refusals.lock().unwrap_or_else(|e| e.into_inner()).flush(&relay);
        }
    }

    /// Forgets calls whose relay stayed away longer than
    /// `cleanup_dead_relays_after` (they were never removed or expired),
    /// and expired calls whose BYE did not come within
    /// `cleanup_expired_sessions_after`.
    fn forget_orphans(&self, now: Instant) {
        let connected: Vec<u64> = self.relays().iter().map(|r| r.id).collect();
        let limit = self.config.dispatcher.cleanup_dead_relays_after;
        let bye_limit = self.config.dispatcher.cleanup_expired_sessions_after;
        let mut table = self.sessions();
        let before = table.len();
        table.retain(|_, e| {
            if let Some(ended) = e.dialog_ended_at {
                return now.duration_since(ended) < bye_limit;
            }
            if connected.contains(&e.relay_id) {
                e.orphaned_since = None;
                return true;
            }
            let since = *e.orphaned_since.get_or_insert(now);
            now.duration_since(since) < limit
        });
        let dropped = before - table.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "forgot calls of relays disconnected for longer than cleanup_dead_relays_after, or expired calls \
                 whose BYE did not come within cleanup_expired_sessions_after"
            );
        }
    }

    pub async fn summaries(&self) -> Vec<Summary> {
        let timeout = self.config.dispatcher.relay_timeout;
        let mut out = Vec::new();
        for relay in self.relays() {
            match self.call(&relay, LinkRequest::Summary, timeout).await.map(|p| Summary::from_json(&p)) {
                Ok(Ok(s)) => out.push(s),
                Ok(Err(e)) => tracing::warn!(relay = %relay.ip, "bad summary from relay: {e}"),
                Err(e) => tracing::warn!(relay = %relay.ip, "summary: relay did not answer ({e:?})"),
            }
        }
        out
    }

    /// Every relay's sessions as one JSON array, each session with its
    /// relay's address. The relays' answers (megabytes with thousands of
    /// calls) are decoded and the array made on a blocking thread, so that
    /// no runtime worker is kept from the module's requests meanwhile.
    pub async fn all_sessions_json(&self) -> String {
        let timeout = self.config.dispatcher.relay_timeout;
        let mut answers = Vec::new();
        for relay in self.relays() {
            match self.call(&relay, LinkRequest::Sessions, timeout).await {
                Ok(payload) => answers.push((relay.id, relay.ip, relay.address(), payload)),
                Err(e) => tracing::warn!(relay = %relay.ip, "sessions: relay did not answer ({e:?})"),
            }
        }
        // Only the calls the dispatcher knows each relay holds are listed.
        let holders: HashMap<String, u64> = self.sessions().iter().map(|(k, e)| (k.clone(), e.relay_id)).collect();
        let merge = move || {
            let mut out = Vec::new();
            for (id, ip, address, payload) in answers {
                match SessionStats::list_from_json(&payload) {
                    Ok(list) => {
                        let (own, other): (Vec<SessionStats>, Vec<SessionStats>) =
                            list.into_iter().partition(|s| holders.get(&s.call_id) == Some(&id));
                        if !other.is_empty() {
                            tracing::debug!(relay = %ip, left_out = other.len(), "sessions: calls this relay does not hold left out");
                        }
                        out.extend(own.into_iter().map(|mut s| {
                            s.relay_ip.get_or_insert_with(|| address.to_string());
                            s
                        }))
                    }
                    Err(e) => tracing::warn!(relay = %ip, "bad sessions list from relay: {e}"),
                }
            }
            SessionStats::list_to_json(&out)
        };
        tokio::task::spawn_blocking(merge).await.unwrap_or_else(|_| "[]".to_string())
    }
}

/// The descriptors the dispatcher's settings can make it hold at once.
pub fn descriptor_budget(config: &Config) -> DescriptorBudget {
    let d = &config.dispatcher;
    DescriptorBudget::new()
        .add("module connections ([Dispatcher] max_module_connections)", d.max_module_connections as u64)
        .add("relay connections ([Dispatcher] max_relay_connections)", d.max_relay_connections as u64)
        .add("management connections ([Dispatcher] max_management_connections)", d.max_management_connections as u64)
        .add(
            "metrics connections ([Dispatcher] max_metrics_connections, when metrics_listen is set)",
            if d.metrics_listen.is_some() { d.max_metrics_connections as u64 } else { 0 },
        )
        .add(
            "the proxy's management interface, 2 per request ([OpenSIPS] max_connections)",
            2 * config.opensips.max_connections as u64,
        )
        .add("listeners, accounting, spool files and the runtime", 64)
}

/// The server side of a TLS handshake, bounded by `handshake_timeout`; the
/// error is a reason for the log line.
pub(crate) async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {}", relaybox_tls::describe_handshake_error(&e))),
        Err(_) => Err(format!("no TLS handshake within {} s ([Dispatcher] handshake_timeout)", timeout.as_secs())),
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::trust::warn_at_start(&config, relaybox_tls::Role::Dispatcher);
    let dispatcher = Dispatcher::new(config)?;
    let module = module_socket::bind(&dispatcher).context("module socket")?;
    let relays = relay_link::bind(&dispatcher).await.context("relay TLS port")?;
    let management = management::bind(&dispatcher).await.context("management port")?;
    let metrics = metrics::bind(&dispatcher).await.context("metrics port")?;
    tracing::info!(
        socket = %dispatcher.config.dispatcher.socket_path.display(),
        relays = %dispatcher.config.dispatcher.listen,
        management = %dispatcher.config.dispatcher.listen_management,
        metrics = %dispatcher.config.dispatcher.metrics_listen.map_or("off".to_string(), |a| a.to_string()),
        "dispatcher ready"
    );
    let metrics = async move {
        match metrics {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let janitor = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                dispatcher.forget_orphans(Instant::now());
                dispatcher.flush_refusals();
            }
        })
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = module => r.context("module socket task")??,
        r = relays => r.context("relay listener task")??,
        r = management => r.context("management task")??,
        r = metrics => r.context("metrics task")??,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, exiting"),
        _ = term.recv() => tracing::info!("terminated, exiting"),
    }
    janitor.abort();
    let _ = std::fs::remove_file(&dispatcher.config.dispatcher.socket_path);
    Ok(())
}
