//! Prometheus metrics. RPC counters and latencies are recorded by the API's gateway through
//! [`record_rpc`]; gauges of the live state are read from [`Live`] at each scrape.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::live::Live;

struct Metrics {
    registry: Registry,
    rpc_total: IntCounterVec,
    rpc_seconds: HistogramVec,
    inputs: GaugeVec,
    containers: GaugeVec,
    store_probe: prometheus::Gauge,
    dashboard_requests: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = Registry::new();
        let rpc_total = IntCounterVec::new(
            Opts::new("ferry_rpc_requests_total", "gRPC calls answered, by method and status code"),
            &["method", "code"],
        )
        .expect("valid metric");
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new("ferry_rpc_duration_seconds", "gRPC call duration until its status, by method and status code")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["method", "code"],
        )
        .expect("valid metric");
        let inputs = GaugeVec::new(
            Opts::new("ferry_function_inputs", "inputs per function by state (queued, running)"),
            &["function_id", "state"],
        )
        .expect("valid metric");
        let containers =
            GaugeVec::new(Opts::new("ferry_containers", "containers running now, by state"), &["state"]).expect("valid metric");
        let store_probe = prometheus::Gauge::new("ferry_store_probe_seconds", "duration of one small store read at scrape time")
            .expect("valid metric");
        let dashboard_requests = IntCounterVec::new(
            Opts::new("ferry_dashboard_requests_total", "dashboard HTTP requests by status class"),
            &["status"],
        )
        .expect("valid metric");
        for m in [
            Box::new(rpc_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_seconds.clone()),
            Box::new(inputs.clone()),
            Box::new(containers.clone()),
            Box::new(store_probe.clone()),
            Box::new(dashboard_requests.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Metrics { registry, rpc_total, rpc_seconds, inputs, containers, store_probe, dashboard_requests }
    })
}

/// The name Prometheus users know for a gRPC status number.
pub fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Records one answered RPC: `code` is the gRPC status number as sent (`"0"` for OK).
pub fn record_rpc(method: &str, code: &str, started: Instant) {
    let m = metrics();
    let code = grpc_code_name(code);
    m.rpc_total.with_label_values(&[method, code]).inc();
    m.rpc_seconds.with_label_values(&[method, code]).observe(started.elapsed().as_secs_f64());
}

pub(crate) fn record_dashboard_request(status: u16) {
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics().dashboard_requests.with_label_values(&[class]).inc();
}

/// The text exposition of all metrics, with the live gauges read now.
pub(crate) async fn render(live: &dyn Live, store: &ferry_store::Store) -> String {
    let m = metrics();
    m.inputs.reset();
    for load in live.function_loads() {
        m.inputs.with_label_values(&[load.function_id.as_str(), "queued"]).set(load.queued as f64);
        m.inputs.with_label_values(&[load.function_id.as_str(), "running"]).set(load.running as f64);
    }
    m.containers.reset();
    for state in ["running", "idle", "stopping"] {
        m.containers.with_label_values(&[state]).set(0.0);
    }
    for c in live.containers() {
        m.containers.with_label_values(&[c.state.as_str()]).inc();
    }
    let started = Instant::now();
    if store.list_environments().await.is_ok() {
        m.store_probe.set(started.elapsed().as_secs_f64());
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&m.registry.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).unwrap_or_default()
}
