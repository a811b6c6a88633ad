//! The HTTP server: binds `admin.listen`, routes the paths, and is told when the worker is up.
//!
//! Owns [`AdminServer`]. It starts before the worker boots (so `/healthz` answers and `/readyz` says
//! "starting" while the store and Kafka are waited for), is [`attach`](AdminServer::attach)ed to the
//! worker once it runs, and stops with the process. The status report is cached for half a refresh, so
//! many open pages cost the store one snapshot per refresh.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use courier_kafka::{KafkaConfig, RangeReader};
use courier_worker::WorkerView;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::AdminConfig;
use crate::health::{liveness, Readiness, Verdict};
use crate::latency::LatencyWindow;
use crate::page::{render, PageInput};
use crate::report::{connect_reader, gather, ConfiguredRoute, Inputs, Report, StatusConfig};

/// What the server needs from the process that runs it.
pub struct Setup {
    pub config: AdminConfig,
    /// `/healthz` fails when a loop has not come round for this long
    /// ([`AdminConfig::stall_bound`]).
    pub stall_bound: Duration,
    /// The Prometheus recorder's handle (`/metrics`); `None`: no Prometheus recorder installed.
    pub prometheus: Option<PrometheusHandle>,
    pub latency: LatencyWindow,
    pub kafka: KafkaConfig,
    pub routes: Vec<ConfiguredRoute>,
    pub status: StatusConfig,
    pub heartbeat_every: Duration,
    /// Shown on the page.
    pub version: &'static str,
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot listen on {address} for the admin endpoint (/healthz, /readyz, /metrics, status page): {source}. \
         Another process (another worker on this host?) may hold the port: set [admin] listen to a free \
         host:port (\"127.0.0.1:0\" picks one), or listen = \"\" to turn the endpoint off"
    )]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl AdminError {
    /// The default address was busy: worth a warning, not worth refusing to deliver.
    pub fn is_busy_default(&self, config: &AdminConfig) -> bool {
        matches!(self, AdminError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
            && config.listen_is_default()
    }
}

/// A status report, or why the store could not be read, as shared between concurrent page loads.
type SharedReport = Arc<Result<Report, String>>;

struct AppState {
    setup: Setup,
    started: Instant,
    worker: OnceLock<WorkerView>,
    readiness: Readiness,
    reader: tokio::sync::OnceCell<RangeReader>,
    report: tokio::sync::Mutex<Option<(Instant, SharedReport)>>,
}

/// A running admin endpoint. Dropping it stops it.
pub struct AdminServer {
    state: Arc<AppState>,
    address: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

impl AdminServer {
    /// Binds and serves; `Ok(None)` when the endpoint is turned off.
    pub async fn start(setup: Setup) -> Result<Option<Self>, AdminError> {
        let Some(address) = setup.config.address().map_err(AdminError::Config)? else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AdminError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { address, source })?;
        let prometheus = setup.prometheus.clone();
        let state = Arc::new(AppState {
            setup,
            started: Instant::now(),
            worker: OnceLock::new(),
            readiness: Readiness::default(),
            reader: tokio::sync::OnceCell::new(),
            report: tokio::sync::Mutex::new(None),
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/status.json", get(status_json))
            .with_state(Arc::clone(&state));
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%address, %error, "The admin endpoint stopped serving; /healthz, /readyz, /metrics and the status page are gone until a restart.");
            }
        })];
        if let Some(handle) = prometheus {
            // Without the exporter's own HTTP listener nobody drains its histogram buckets: do it here.
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            }));
        }
        tracing::info!(url = %format!("http://{address}/"), "Admin endpoint listening: / (status page), /healthz, /readyz, /metrics.");
        Ok(Some(Self {
            state,
            address,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Where it listens (with the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The worker is up: report on it, and start checking readiness.
    pub fn attach(&self, worker: WorkerView) {
        if self.state.worker.set(worker.clone()).is_err() {
            return;
        }
        let state = Arc::clone(&self.state);
        let task = tokio::spawn(async move {
            let kafka = state.setup.kafka.clone();
            state.readiness.check_forever(worker, kafka).await;
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }
}

impl AppState {
    fn liveness(&self) -> Verdict {
        liveness(
            self.worker.get().map(WorkerView::liveness),
            self.setup.stall_bound,
        )
    }

    /// The report, at most half a refresh old.
    async fn report(&self, worker: &WorkerView) -> SharedReport {
        let mut cached = self.report.lock().await;
        let fresh_for = (self.setup.config.refresh / 2).max(Duration::from_secs(1));
        if let Some((at, report)) = &*cached {
            if at.elapsed() < fresh_for {
                return Arc::clone(report);
            }
        }
        let timeout = self.setup.status.timeout;
        let reader = self
            .reader
            .get_or_try_init(|| connect_reader(&self.setup.kafka, timeout))
            .await;
        let inputs = Inputs {
            configured: &self.setup.routes,
            status: &self.setup.status,
            heartbeat_every: self.setup.heartbeat_every,
            brokers: &self.setup.kafka.brokers,
        };
        let report = Arc::new(
            gather(worker.store(), reader, &inputs)
                .await
                .map_err(|error| error.to_string()),
        );
        *cached = Some((Instant::now(), Arc::clone(&report)));
        report
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body + "\n",
    )
        .into_response()
}

fn verdict_response(verdict: Verdict) -> Response {
    let status = if verdict.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, verdict.text)
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    verdict_response(state.liveness())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    verdict_response(state.readiness.verdict(state.worker.get()))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match &state.setup.prometheus {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "no Prometheus recorder is installed in this process".into(),
        ),
    }
}

async fn status_json(State(state): State<Arc<AppState>>) -> Response {
    let json = |status: StatusCode, value: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    let Some(worker) = state.worker.get() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the worker is starting"}),
        );
    };
    match &*state.report(worker).await {
        Ok(report) => json(StatusCode::OK, report.to_json()),
        Err(error) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": format!("cannot read the store: {error}") }),
        ),
    }
}

async fn page(State(state): State<Arc<AppState>>) -> Response {
    let worker = state.worker.get();
    let report = match worker {
        Some(worker) => Some(state.report(worker).await),
        None => None,
    };
    let destinations = worker.map(WorkerView::destinations).unwrap_or_default();
    let latency = state.setup.latency.summaries();
    let health = state.liveness();
    let ready = state.readiness.verdict(worker);
    let html = render(&PageInput {
        worker: worker.map(WorkerView::id),
        version: state.setup.version,
        uptime: state.started.elapsed(),
        health: &health,
        ready: &ready,
        report: report
            .as_deref()
            .map(|r| r.as_ref().map_err(String::as_str)),
        destinations: &destinations,
        latency: &latency,
        refresh: state.setup.config.refresh,
    });
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}
