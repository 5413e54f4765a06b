//! The dispatcher's Prometheus exporter (`[Dispatcher] metrics_listen`):
//! plain HTTP, `GET /metrics`, Prometheus text format 0.0.4 encoded by
//! `prometheus-client`. The counters and the latency histogram are updated
//! where things happen (module requests, relay attempts, accounting,
//! dialogs, refusals); gauges (relays, calls, spool depth, connections) are
//! read from the dispatcher's state when a scrape arrives.
//!
//! The port shows counts only, never a call's parties or addresses. It is
//! still a listener like the others: connections capped in total and per
//! address (`max_metrics_connections`, `..._per_ip`), a request header must
//! arrive within `handshake_timeout`, and no accept error ends the daemon.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use relaybox_limits::{AcceptErrors, ConnectionLimits, Gate};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Dispatcher;

type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Owned = Vec<(String, String)>;

/// Upper bounds of the module-request latency histogram, in seconds: the
/// module gives up after 500 ms (`module_timeout`), so most of the detail
/// is below that.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the dispatcher counts, and the gates whose connections it reports.
pub(crate) struct Metrics {
    registry: Registry,
    module_requests: Family<Labels2, Counter>,
    module_latency: Family<Label, Histogram, fn() -> Histogram>,
    updates_without_relay: Counter,
    relay_attempts: Family<Label, Counter>,
    sessions_accounted: Family<Label, Counter>,
    reports_refused: Counter,
    dialogs_ended: Family<Label, Counter>,
    relay_links_refused: Counter,
    gates: Mutex<Vec<Arc<Gate>>>,
    started: std::time::SystemTime,
}

/// `relaybox_dispatcher_dialogs_ended`, shared with the tasks that ask the
/// proxy to end dialogs.
pub(crate) struct DialogsEnded(Family<Label, Counter>);

impl DialogsEnded {
    pub fn count(&self, ok: bool) {
        self.0.get_or_create(&[("result", if ok { "ok" } else { "failed" })]).inc();
    }
}

/// How one attempt at a relay for an `update` went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    Ports,
    Error,
    Halting,
    BadAnswer,
    Timeout,
    Gone,
}

impl Attempt {
    fn as_str(self) -> &'static str {
        match self {
            Attempt::Ports => "ports",
            Attempt::Error => "error",
            Attempt::Halting => "halting",
            Attempt::BadAnswer => "bad_answer",
            Attempt::Timeout => "timeout",
            Attempt::Gone => "gone",
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let module_requests = Family::<Labels2, Counter>::default();
        registry.register(
            "relaybox_dispatcher_module_requests",
            "Requests from the proxy's mediaproxy module, by kind (update, remove; invalid: refused before it \
             was understood) and the answer given (ports, error, removed)",
            module_requests.clone(),
        );
        let module_latency: Family<Label, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "relaybox_dispatcher_module_request_duration_seconds",
            "Time from a module request read to its answer written, by kind",
            module_latency.clone(),
        );
        let updates_without_relay = Counter::default();
        registry.register(
            "relaybox_dispatcher_updates_without_relay",
            "Updates answered error at once because no relay was connected and active",
            updates_without_relay.clone(),
        );
        let relay_attempts = Family::<Label, Counter>::default();
        registry.register(
            "relaybox_dispatcher_relay_attempts",
            "Updates sent to a relay, by outcome (ports; error, halting, bad_answer, timeout, gone: the next relay \
             was tried)",
            relay_attempts.clone(),
        );
        let sessions_accounted = Family::<Label, Counter>::default();
        registry.register(
            "relaybox_dispatcher_sessions_accounted",
            "Calls ended and accounted, by how (removed: BYE through the module; expired: the relay's media timed out)",
            sessions_accounted.clone(),
        );
        let reports_refused = Counter::default();
        registry.register(
            "relaybox_dispatcher_relay_reports_refused",
            "Reports, remove answers and listed calls refused because the relay does not hold the call",
            reports_refused.clone(),
        );
        let dialogs_ended = Family::<Label, Counter>::default();
        registry.register(
            "relaybox_dispatcher_dialogs_ended",
            "Dialogs of expired calls the proxy was asked to end, by result (ok, failed)",
            dialogs_ended.clone(),
        );
        let relay_links_refused = Counter::default();
        registry.register(
            "relaybox_dispatcher_relay_links_refused",
            "Relay connections refused after accept: TLS handshake failed or timed out, wrong certificate role, \
             passport",
            relay_links_refused.clone(),
        );
        for kind in ["update", "remove"] {
            let _ = module_latency.get_or_create(&[("kind", kind)]);
        }
        for result in ["ok", "failed"] {
            let _ = dialogs_ended.get_or_create(&[("result", result)]);
        }
        for outcome in
            [Attempt::Ports, Attempt::Error, Attempt::Halting, Attempt::BadAnswer, Attempt::Timeout, Attempt::Gone]
        {
            let _ = relay_attempts.get_or_create(&[("result", outcome.as_str())]);
        }
        for how in ["removed", "expired"] {
            let _ = sessions_accounted.get_or_create(&[("how", how)]);
        }
        Metrics {
            registry,
            module_requests,
            module_latency,
            updates_without_relay,
            relay_attempts,
            sessions_accounted,
            reports_refused,
            dialogs_ended,
            relay_links_refused,
            gates: Mutex::new(Vec::new()),
            started: std::time::SystemTime::now(),
        }
    }

    /// One module request answered: `kind` is `update`, `remove` or
    /// `invalid`, `answer` the reply's kind.
    pub fn module_request(&self, kind: &'static str, answer: &'static str, took: Duration) {
        self.module_requests.get_or_create(&[("kind", kind), ("result", answer)]).inc();
        if kind != "invalid" {
            self.module_latency.get_or_create(&[("kind", kind)]).observe(took.as_secs_f64());
        }
    }

    pub fn update_without_relay(&self) {
        self.updates_without_relay.inc();
    }

    pub fn relay_attempt(&self, outcome: Attempt) {
        self.relay_attempts.get_or_create(&[("result", outcome.as_str())]).inc();
    }

    pub fn session_accounted(&self, expired: bool) {
        let how = if expired { "expired" } else { "removed" };
        self.sessions_accounted.get_or_create(&[("how", how)]).inc();
    }

    pub fn report_refused(&self) {
        self.reports_refused.inc();
    }

    /// The dialogs-ended counter, for the task that waits for the proxy.
    pub fn dialogs_ended(&self) -> DialogsEnded {
        DialogsEnded(self.dialogs_ended.clone())
    }

    pub fn relay_link_refused(&self) {
        self.relay_links_refused.inc();
    }

    /// Reports `gate`'s open and refused connections, under its listener name.
    pub fn watch(&self, gate: &Arc<Gate>) {
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).push(gate.clone());
    }

    /// The exposition text: the counters, then the gauges read now.
    pub fn render(&self, dispatcher: &Dispatcher) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &self.gauges(dispatcher));
        out
    }

    fn gauges(&self, dispatcher: &Dispatcher) -> Registry {
        let mut r = Registry::default();
        let relays = dispatcher.relays();
        let halting = relays.iter().filter(|r| r.halting.load(std::sync::atomic::Ordering::Relaxed)).count();
        let by_state = Family::<Label, Gauge>::default();
        by_state.get_or_create(&[("state", "active")]).set((relays.len() - halting) as i64);
        by_state.get_or_create(&[("state", "halting")]).set(halting as i64);
        r.register("relaybox_dispatcher_relays", "Relays connected, by state", by_state);

        let calls = Gauge::<i64>::default();
        calls.set(dispatcher.sessions().len() as i64);
        r.register("relaybox_dispatcher_calls", "Calls the dispatcher knows a relay holds", calls);

        let spool = Family::<Owned, Gauge>::default();
        for (backend, held) in dispatcher.accounting.pending_by_backend() {
            spool.get_or_create(&vec![("backend".to_string(), backend)]).set(held as i64);
        }
        r.register(
            "relaybox_dispatcher_accounting_spool_records",
            "Accounting records waiting for their backend (a backend that is down keeps them), by backend",
            spool,
        );

        let open = Family::<Owned, Gauge>::default();
        let refused = Family::<Owned, Counter>::default();
        for gate in self.gates.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let label = vec![("listener".to_string(), gate.listener().to_string())];
            open.get_or_create(&label).set(gate.open() as i64);
            refused.get_or_create(&label).inc_by(gate.refused());
        }
        r.register("relaybox_dispatcher_connections", "Connections open, by listener", open);
        r.register(
            "relaybox_dispatcher_connections_refused",
            "Connections refused by a listener's caps (in total or per source), by listener",
            refused,
        );

        let info = Family::<Label, Gauge>::default();
        info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        r.register("relaybox_dispatcher_build_info", "The dispatcher's version (always 1)", info);
        let started = Gauge::<i64>::default();
        started.set(self.started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
        r.register("relaybox_dispatcher_start_time_seconds", "When the dispatcher started, in Unix time", started);
        r
    }
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn respond(dispatcher: &Dispatcher, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            answer(StatusCode::OK, prometheus_text::CONTENT_TYPE, dispatcher.metrics.render(dispatcher))
        }
        (_, "/metrics") => answer(StatusCode::METHOD_NOT_ALLOWED, text, "GET /metrics\n".into()),
        _ => answer(StatusCode::NOT_FOUND, text, "the metrics are at /metrics\n".into()),
    }
}

/// Binds `[Dispatcher] metrics_listen`, when set, and serves it.
pub(crate) async fn bind(dispatcher: &Arc<Dispatcher>) -> anyhow::Result<Option<JoinHandle<anyhow::Result<()>>>> {
    let cfg = &dispatcher.config.dispatcher;
    let Some(addr) = cfg.metrics_listen else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let gate = Gate::new(
        "metrics port",
        ConnectionLimits {
            total: cfg.max_metrics_connections,
            per_source: cfg.max_metrics_connections_per_ip,
            total_setting: "[Dispatcher] max_metrics_connections",
            per_source_setting: "[Dispatcher] max_metrics_connections_per_ip",
        },
    );
    dispatcher.metrics.watch(&gate);
    let timeout = cfg.handshake_timeout;
    let dispatcher = dispatcher.clone();
    Ok(Some(tokio::spawn(async move {
        let mut errors = AcceptErrors::new("metrics port");
        loop {
            let (tcp, _peer, admission) = relaybox_limits::next_tcp(&listener, &gate, &mut errors).await;
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                let _admission = admission;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = respond(&dispatcher, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client gets handshake_timeout for each request's header,
                // waiting between requests included.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })))
}
