//! What this process has done, as counters, gauges and histograms shared by every role:
//! exported as Prometheus text by [`render`] (the `metrics_listen` endpoint) and read by
//! `allium status`. Each update is one relaxed atomic add; nothing here is per address,
//! per circuit or per destination, so the export says nothing about who used the node.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::limits::counters::LIMITS;

/// A count that only goes up.
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// A value that goes up and down (things open now).
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Counts one more open thing until the returned guard drops.
    pub fn open(&'static self) -> OpenGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

/// One open thing counted in a [`Gauge`]; dropping it counts it closed.
pub struct OpenGuard(&'static Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Durations in [`DURATION_BUCKETS`] (plus +Inf), their sum and count.
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Histogram { buckets: [ZERO; DURATION_BUCKETS.len()], sum_us: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter per value of one label; the values are fixed at compile time.
pub struct Labeled<const N: usize> {
    pub label: &'static str,
    pub values: [&'static str; N],
    counts: [Counter; N],
}

impl<const N: usize> Labeled<N> {
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: Counter = Counter::new();
        Labeled { label, values, counts: [ZERO; N] }
    }

    /// Counts one event with label value `value`; a value not in the list counts as the last
    /// one (which is "other" by convention).
    pub fn inc(&self, value: &str) {
        let i = self.values.iter().position(|v| *v == value).unwrap_or(N - 1);
        self.counts[i].inc();
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(Counter::get).sum()
    }

    /// Each label value with its count.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.values.iter().copied().zip(self.counts.iter().map(Counter::get))
    }
}

/// Why a circuit failed or was refused (label `reason`).
pub const CIRCUIT_FAILURES: [&str; 6] = ["timeout", "destroyed", "refused_by_limit", "handshake", "connect", "other"];
/// Whether an EXTEND found a link to the next hop open or dialled one (label `link`).
pub const EXTEND_LINKS: [&str; 2] = ["open", "dialled"];
/// Why a stream failed or was refused (label `reason`).
pub const STREAM_FAILURES: [&str; 6] = ["exit_policy", "resolve", "connect", "refused_by_limit", "timeout", "other"];

/// The `reason` label of a stream that ended with `reason` before it opened.
pub fn stream_failure(reason: allium_proto::relay_msg::EndReason) -> &'static str {
    use allium_proto::relay_msg::EndReason::*;
    match reason {
        ExitPolicy => "exit_policy",
        ResolveFailed => "resolve",
        ConnectRefused | NoRoute | ConnReset => "connect",
        ResourceLimit => "refused_by_limit",
        Timeout => "timeout",
        _ => "other",
    }
}

/// Every metric of this process.
pub struct Metrics {
    pub circuits_open: Gauge,
    pub circuits_opened: Counter,
    pub circuits_failed: Labeled<6>,
    pub circuit_build: Histogram,
    pub streams_open: Gauge,
    pub streams_opened: Counter,
    pub streams_failed: Labeled<6>,
    pub links_open: Gauge,
    pub links_opened: Counter,
    /// Links a relay opened ahead of need (`limits.preconnect_relays`).
    pub links_preconnected: Counter,
    /// EXTENDs a relay carried out, by whether a link to the next hop was open already.
    pub extends: Labeled<2>,
    pub bytes_read: Counter,
    pub cells_read: Counter,
    pub handshakes: Counter,
    pub handshake_queue_delay: Histogram,
    pub onion_introductions: Counter,
    /// INTRODUCE2 a service dropped as replays of one it had handled (THREATS A13).
    pub onion_introductions_replayed: Counter,
    pub onion_rendezvous: Counter,
    /// Client stream recovery: BEGINs given up for lack of CONNECTED or END, streams ended
    /// because they stalled while owed DATA or a SENDME, and circuits that stopped taking new
    /// streams for either reason.
    pub begin_timeouts: Counter,
    pub stalled_streams: Counter,
    pub circuits_retired: Counter,
    /// valid-after / valid-until of the consensus this node uses (Unix seconds; 0: none).
    pub consensus_valid_after: Gauge,
    pub consensus_valid_until: Gauge,
    /// Client bootstrap in percent (clients only).
    pub bootstrap_percent: Gauge,
    /// When this process started its node (Unix seconds).
    pub started: Gauge,
    /// Config reloads (SIGHUP) that loaded, and ones that failed (the running config kept).
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    /// Times freed memory was handed back to the system ([`crate::mem_trim`]).
    pub memory_trims: Counter,
    /// Consensuses fetched as a diff from the one held, applied and verified (clients).
    pub consensus_diffs: Counter,
    pub bandwidth_measurements: Counter,
    pub bandwidth_measurement_failures: Counter,
}

/// The metrics of this process.
pub static METRICS: Metrics = Metrics {
    circuits_open: Gauge::new(),
    circuits_opened: Counter::new(),
    circuits_failed: Labeled::new("reason", CIRCUIT_FAILURES),
    circuit_build: Histogram::new(),
    streams_open: Gauge::new(),
    streams_opened: Counter::new(),
    streams_failed: Labeled::new("reason", STREAM_FAILURES),
    links_open: Gauge::new(),
    links_opened: Counter::new(),
    links_preconnected: Counter::new(),
    extends: Labeled::new("link", EXTEND_LINKS),
    bytes_read: Counter::new(),
    cells_read: Counter::new(),
    handshakes: Counter::new(),
    handshake_queue_delay: Histogram::new(),
    onion_introductions: Counter::new(),
    onion_introductions_replayed: Counter::new(),
    onion_rendezvous: Counter::new(),
    begin_timeouts: Counter::new(),
    stalled_streams: Counter::new(),
    circuits_retired: Counter::new(),
    consensus_valid_after: Gauge::new(),
    consensus_valid_until: Gauge::new(),
    bootstrap_percent: Gauge::new(),
    started: Gauge::new(),
    config_reloads: Counter::new(),
    config_reload_failures: Counter::new(),
    memory_trims: Counter::new(),
    consensus_diffs: Counter::new(),
    bandwidth_measurements: Counter::new(),
    bandwidth_measurement_failures: Counter::new(),
};

impl Metrics {
    /// Records the validity of the consensus now in use.
    pub fn set_consensus(&self, valid_after: u64, valid_until: u64) {
        self.consensus_valid_after.set(valid_after as i64);
        self.consensus_valid_until.set(valid_until as i64);
    }
}

/// The Prometheus text exposition (format 0.0.4) of every metric, at Unix time `now`.
pub fn render(role: &str, now: u64) -> String {
    let m = &METRICS;
    let links = &crate::channel::LINK_STATS;
    let mut out = String::with_capacity(8 * 1024);
    let mut w = Writer(&mut out);
    w.gauge_labeled("allium_info", "This node's role and version (always 1).", &[("role", role), ("version", env!("CARGO_PKG_VERSION"))], 1);
    let started = m.started.get();
    w.gauge("allium_uptime_seconds", "Seconds since this node started.", if started > 0 { now as i64 - started } else { 0 });
    w.gauge("allium_circuits_open", "Circuits open now (built by this client, or through this relay).", m.circuits_open.get());
    w.counter("allium_circuits_opened_total", "Circuits opened since start.", m.circuits_opened.get());
    w.labeled("allium_circuits_failed_total", "Circuits that failed or were refused, by reason.", &m.circuits_failed);
    w.histogram("allium_circuit_build_seconds", "Time to build a circuit (clients: all hops; relays: the CREATE handshake).", &m.circuit_build);
    w.gauge("allium_streams_open", "Streams open now.", m.streams_open.get());
    w.counter("allium_streams_opened_total", "Streams opened since start.", m.streams_opened.get());
    w.labeled("allium_streams_failed_total", "Streams that failed or were refused, by reason.", &m.streams_failed);
    w.gauge("allium_links_open", "Links (TLS-like channels to other nodes) open now.", m.links_open.get());
    w.counter("allium_links_opened_total", "Links opened since start.", m.links_opened.get());
    w.counter("allium_links_preconnected_total", "Links to relays opened ahead of need (limits.preconnect_relays).", m.links_preconnected.get());
    w.labeled("allium_extends_total", "EXTENDs carried out, by whether the link to the next hop was open or had to be dialled.", &m.extends);
    w.counter("allium_link_read_bytes_total", "Bytes read from links.", m.bytes_read.get());
    w.counter("allium_link_written_bytes_total", "Bytes written to links.", links.bytes_written.load(Ordering::Relaxed));
    w.counter("allium_cells_read_total", "Cells read from links.", m.cells_read.get());
    w.counter("allium_cells_written_total", "Cells written to links.", links.cells_written.load(Ordering::Relaxed));
    w.counter("allium_handshakes_total", "CREATE handshakes completed by this relay.", m.handshakes.get());
    w.histogram("allium_handshake_queue_delay_seconds", "Time a CREATE handshake waited for a handshake thread.", &m.handshake_queue_delay);
    w.counter("allium_onion_introductions_total", "Introductions handled (service: INTRODUCE2 received; relay: INTRODUCE1 forwarded).", m.onion_introductions.get());
    w.counter("allium_onion_introductions_replayed_total", "INTRODUCE2 a service dropped as a replay of one it had handled.", m.onion_introductions_replayed.get());
    w.counter("allium_onion_rendezvous_total", "Rendezvous completed (service or client: joined; relay: circuits spliced).", m.onion_rendezvous.get());
    w.counter("allium_stream_begin_timeouts_total", "Streams given up because their BEGIN got no CONNECTED in time (clients; retried on another circuit).", m.begin_timeouts.get());
    w.counter("allium_streams_stalled_total", "Streams ended because nothing arrived for the stall timeout while data was owed (clients).", m.stalled_streams.get());
    w.counter("allium_circuits_retired_total", "Circuits that stopped taking new streams after a BEGIN timeout or a stall (clients).", m.circuits_retired.get());
    let (va, vu) = (m.consensus_valid_after.get(), m.consensus_valid_until.get());
    w.gauge("allium_consensus_age_seconds", "Seconds since the valid-after time of the consensus in use (-1: none).", if va > 0 { now as i64 - va } else { -1 });
    w.gauge("allium_consensus_valid", "1 if the consensus in use is valid now, else 0.", i64::from(va > 0 && (va..vu).contains(&(now as i64))));
    w.gauge("allium_bootstrap_percent", "Client bootstrap progress in percent (0 on other roles).", m.bootstrap_percent.get());
    w.counter("allium_config_reloads_total", "Config reloads (SIGHUP) that loaded.", m.config_reloads.get());
    w.counter("allium_config_reload_failures_total", "Config reloads (SIGHUP) refused: the file did not load; the running config was kept.", m.config_reload_failures.get());
    w.counter("allium_memory_trims_total", "Times memory freed after a burst was handed back to the system.", m.memory_trims.get());
    w.counter("allium_consensus_diffs_total", "Consensuses fetched as a diff from the one held, applied and verified (clients).", m.consensus_diffs.get());
    w.counter("allium_bandwidth_measurements_total", "Relays whose bandwidth this authority's scanner measured (authority.bandwidth_scan).", m.bandwidth_measurements.get());
    w.counter("allium_bandwidth_measurement_failures_total", "Bandwidth measurements that failed (no circuit, no answer in 30 s).", m.bandwidth_measurement_failures.get());
    let limits = LIMITS.snapshot();
    w.header("allium_limit_hits_total", "counter", "Times each DoS limit refused or closed something.");
    for (name, n) in limits {
        let _ = writeln!(w.0, "allium_limit_hits_total{{limit=\"{name}\"}} {n}");
    }
    out
}

struct Writer<'a>(&'a mut String);

impl Writer<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.0, "{name} {v}");
    }
    fn gauge(&mut self, name: &str, help: &str, v: i64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {v}");
    }
    fn gauge_labeled(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: i64) {
        self.header(name, "gauge", help);
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
    }
    fn labeled<const N: usize>(&mut self, name: &str, help: &str, f: &Labeled<N>) {
        self.header(name, "counter", help);
        for (v, c) in f.values.iter().zip(&f.counts) {
            let _ = writeln!(self.0, "{name}{{{}=\"{v}\"}} {}", f.label, c.get());
        }
    }
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (b, c) in DURATION_BUCKETS.iter().zip(&h.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {}", count.max(cumulative));
        let _ = writeln!(self.0, "{name}_sum {}", h.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(self.0, "{name}_count {}", count.max(cumulative));
    }
}

/// A label value escaped as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        Writer(&mut s).histogram("x_seconds", "x", &h);
        assert!(s.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.05\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_count 3\n"), "{s}");
    }

    #[test]
    fn an_unknown_label_value_counts_as_other() {
        let f = Labeled::new("reason", ["a", "other"]);
        f.inc("a");
        f.inc("zzz");
        let mut s = String::new();
        Writer(&mut s).labeled("f_total", "f", &f);
        assert!(s.contains("f_total{reason=\"a\"} 1\n") && s.contains("f_total{reason=\"other\"} 1\n"), "{s}");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let text = render("relay", 100);
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, text.lines().filter(|l| l.starts_with("# HELP ")).count());
        assert!(families >= 20, "{families} families");
        assert!(text.contains("allium_limit_hits_total{limit=\"create_rate\"}"));
    }
}
