//! The rows under real round-trip times: a second test network whose every link holds its
//! outbound data 5 ms (`allium testnet --link-delay-ms 5`; a 3-hop circuit's round trip is then
//! 30 ms, and a 3-hop build's floor 10 + 20 + 30 = 60 ms). The same shapes as the loopback rows:
//! forced circuit builds, a 1 MiB GET on a warm circuit, one 100 MB stream.
//!
//! A build that opens a new link pays that link's handshake as on a real network (5 × the
//! delay: see `dangerous_link_delay_ms` in docs/PROTOCOL.md); relays keep and pre-open their
//! links to each other, so a build on a running network opens only the client's first link,
//! if that. Delayed links keep time with a thread each, so a crossing is late by scheduling
//! only (microseconds on an idle machine).

use std::time::Instant;

use crate::support::http::FileServer;
use crate::support::testnet::Testnet;
use crate::{build_times_ms, file_len, list, median, median_value, percentile, progress, rate_value, read_from, Report, Target, PHASE_BUDGET, TRANSFER_TIMEOUT};

/// Milliseconds each link holds its outbound data.
const DELAY_MS: &str = "5";
/// Circuits forced for the build-time row.
const BUILDS: usize = 20;
/// 1 MiB GETs on one warm circuit (the median is reported).
const MIB_GETS: usize = 5;
/// Runs of the 100 MB download (the median is reported).
const BULK_RUNS: usize = 3;

/// Adds the latency rows to `out`. `server` serves `/1k`, `/1048576` and `/100000000`.
pub fn measure(server: &FileServer, out: &mut Report) {
    progress(&format!("starting a second testnet with {DELAY_MS} ms per link"));
    let net = Testnet::start(&["--link-delay-ms", DELAY_MS]);
    let target = Target { socks: net.socks, server, host: "127.0.0.1".into(), port: server.addr().port() };
    let client_log = net.dir.join("client").join("log");

    progress(&format!("{DELAY_MS} ms per link: forcing {BUILDS} circuit builds"));
    let mark = file_len(&client_log);
    let phase = Instant::now();
    let mut failures = Vec::new();
    for i in 0..BUILDS {
        if phase.elapsed() > PHASE_BUDGET {
            failures.push(format!("stopped after {i} builds"));
            break;
        }
        if let Err(e) = target.get("/1k", &format!("lat-build-{i}"), TRANSFER_TIMEOUT) {
            failures.push(format!("lat-build-{i}: {e}"));
        }
    }
    let builds = build_times_ms(&read_from(&client_log, mark));
    out.row(
        "3-hop circuit build at 5 ms per link, median / p99",
        if builds.is_empty() { format!("FAILED: no builds logged ({})", failures.join("; ")) } else { format!("{:.1} ms / {:.1} ms", median(&builds), percentile(&builds, 0.99)) },
        "≤ 65 ms median",
        "60 ms",
    );
    out.detail(format!(
        "5 ms per link: {} builds logged, {} of {BUILDS} GETs failed; build times (ms): {}",
        builds.len(),
        failures.len(),
        list(&builds)
    ));

    progress(&format!("{DELAY_MS} ms per link: {MIB_GETS} 1 MiB GETs on a warm circuit"));
    let gets = (|| -> Result<Vec<f64>, String> {
        target.get("/1k", "lat-mib", TRANSFER_TIMEOUT)?; // builds the circuit
        (0..MIB_GETS).map(|_| Ok(target.get("/1048576", "lat-mib", TRANSFER_TIMEOUT)?.total.as_secs_f64())).collect()
    })();
    out.row(
        "1 MiB GET at 5 ms per link, warm circuit, median",
        median_value(&gets, |m| format!("{m:.3} s")),
        "≤ 0.15 s",
        "0.223 s",
    );
    if let Ok(v) = &gets {
        out.detail(format!("5 ms per link: 1 MiB GETs (s): {}", v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ")));
    }

    progress(&format!("{DELAY_MS} ms per link: one stream, 100 MB, up to {BULK_RUNS} runs"));
    let phase = Instant::now();
    let mut runs = Vec::new();
    let mut err = None;
    if let Err(e) = target.get("/1k", "lat-bulk", TRANSFER_TIMEOUT) {
        err = Some(e.to_string());
    }
    while err.is_none() && runs.len() < BULK_RUNS && phase.elapsed() <= PHASE_BUDGET {
        match target.get("/100000000", "lat-bulk", TRANSFER_TIMEOUT) {
            Ok(f) => runs.push(f.bytes as f64 / 1e6 / f.total.as_secs_f64()),
            Err(e) => err = Some(e.to_string()),
        }
    }
    out.row("one stream, 100 MB download at 5 ms per link", rate_value(&runs, &err), "≥ 50 MB/s", "not measured");
    out.detail(format!("5 ms per link: one stream runs (MB/s): {}", list(&runs)));
    progress("stopping the second testnet");
    drop(net);
}
