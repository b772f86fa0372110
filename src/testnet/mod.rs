//! `allium testnet`: a whole Allium network on loopback addresses, one OS process per node.
//!
//! Steps, each printed as it completes:
//! 1. plan the nodes ([`layout`]), create or load each node's keys, write each config.toml;
//! 2. start the authorities and wait for their dir ports to answer;
//! 3. start the relays and exits and wait for their OR ports to answer;
//! 4. poll the authorities' consensus until it lists every relay;
//! 5. start the client and the hs node (a client hosting one onion service, whose target is
//!    `--hs-target` or the built-in web server [`web`]), and push a probe stream through the
//!    client ([`probe`]) until one crosses.
//!
//! Only then are `DIR/nodes` and `DIR/testnet.env` written (atomically, env last), so a script
//! can wait for `DIR/testnet.env` and then use the network. Then the client connects to the
//! onion service until a stream reaches it, and `DIR/testnet.env` is rewritten with
//! `ONION_HOST`: the address works the moment it appears there. A stop signal at any time, or a
//! node dying during startup, stops every node ([`spawn`]).

pub(crate) mod layout;
mod probe;
mod spawn;
mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::signals::NodeSignals;
use layout::{Counts, NodeSpec, Role};
use probe::ProbeOutcome;
use spawn::NodeProc;

/// How often startup polls (ports, consensus, probe retries).
const POLL: Duration = Duration::from_millis(25);
/// How long a node may take to open its listening port.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// How long until the consensus must list every relay.
const CONSENSUS_DEADLINE: Duration = Duration::from_secs(90);
/// How long the probe may keep retrying after the client's SOCKS port answers.
const PROBE_DEADLINE: Duration = Duration::from_secs(120);
/// How long one probe attempt may take.
const PROBE_ATTEMPT: Duration = Duration::from_secs(30);
/// How long the client may take to first reach the onion service once the network is ready.
const ONION_DEADLINE: Duration = Duration::from_secs(180);
/// How long nodes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Log lines shown when a node fails.
const TAIL_LINES: usize = 20;

/// Arguments of `allium testnet`.
#[derive(Debug, Args)]
pub struct TestnetArgs {
    /// Directory for every node's keys, config.toml and log, plus `nodes` and `testnet.env`.
    /// Existing keys there are reused. Default: a fresh temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Number of directory authorities.
    #[arg(long, default_value_t = 3)]
    pub authorities: usize,
    /// Number of relays, exits included (at least 3).
    #[arg(long, default_value_t = 5)]
    pub relays: usize,
    /// How many of the relays are exits.
    #[arg(long, default_value_t = 2)]
    pub exits: usize,
    /// Number of clients: `client` (on --socks-port) and `client2`, `client3`, … (each on a free
    /// SOCKS port listed in `DIR/nodes`).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Port of the client's SOCKS5 proxy on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 9050)]
    pub socks_port: u16,
    /// Also give the client an HTTP CONNECT proxy on 127.0.0.1:PORT (0 picks a free one);
    /// `DIR/testnet.env` then has `HTTP_CONNECT_PORT`. Default: none.
    #[arg(long, value_name = "PORT")]
    pub http_connect_port: Option<u16>,
    /// How many exits (the last ones) keep the default exit policy, which refuses private and
    /// loopback destinations, instead of the test network's `accept *:*`.
    #[arg(long, default_value_t = 0)]
    pub strict_exits: usize,
    /// A consensus parameter every authority votes, as NAME=VALUE (repeatable), e.g.
    /// `--param stream-xoff=200`; names and bounds as in docs/PROTOCOL.md.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, i64)>,
    /// Where the test network's onion service sends its streams (port 80 of the service):
    /// IP:PORT, or a name such as localhost:8080 (resolved here, once, on this machine: it is
    /// the service's own target). Default: a small built-in web server on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_target)]
    pub hs_target: Option<SocketAddr>,
    /// Every node holds each link's outbound data this many milliseconds before writing it
    /// (`network.dangerous_link_delay_ms`), so the loopback network has real round-trip times:
    /// a 3-hop circuit's round trip is then 6 × N ms. 0 (the default): no delay; at most 1000.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub link_delay_ms: u64,
    /// The authorities' voting interval in seconds (`authority.voting_interval_secs`): a
    /// consensus is valid for 3 intervals, and clients keep one that expired for 6 more
    /// when no newer one can be had.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub voting_interval: u64,
    /// Test-only fault: every relay flips one byte of each relay cell it forwards after the
    /// first N on a circuit.
    #[arg(long, hide = true, value_name = "N")]
    pub dangerous_test_corrupt_after: Option<u64>,
    /// Test-only fault: every relay forwards N relay cells toward the exit on each circuit,
    /// then silently drops every later relay cell in both directions.
    #[arg(long, hide = true, value_name = "N")]
    pub dangerous_test_stop_forwarding_after: Option<u64>,
    /// Test-only fault (THREATS A17): every non-exit relay sends the client a message of its
    /// own from a middle position (`drop` or `introduce_ack`, or `relay_early`: mark a forwarded cell RELAY_EARLY) once per circuit, after forwarding
    /// 200 cells toward it.
    #[arg(long, hide = true, value_name = "KIND", value_parser = ["drop", "introduce_ack", "relay_early"])]
    pub dangerous_test_inject_from_middle: Option<String>,
    /// Test-only fault (THREATS A32): the first K non-exit relays complete link handshakes but
    /// never answer a CREATE or any cell; the client then starts from a short build timeout
    /// (`client.dangerous_initial_build_timeout_ms`).
    #[arg(long, hide = true, value_name = "K", default_value_t = 0)]
    pub dangerous_test_blackhole_relays: usize,
    /// Test-only fault (THREATS A13): every relay, as an introduction point, forwards each
    /// INTRODUCE2 twice.
    #[arg(long, hide = true)]
    pub dangerous_test_duplicate_introduce2: bool,
    /// Test-only fault (THREATS A5): the first K non-exit relays, as HSDirs, serve every
    /// descriptor with its signature altered.
    #[arg(long, hide = true, value_name = "K", default_value_t = 0)]
    pub dangerous_test_mutating_hsdirs: usize,
    /// Every authority measures relays' bandwidth and votes measured weights
    /// (`authority.bandwidth_scan`).
    #[arg(long)]
    pub bandwidth_scan: bool,
    /// Test-only fault: `relay1` is rate-limited to RATE bytes/s (`relay.bandwidth_rate`) and
    /// claims CLAIM bytes/s in its descriptor.
    #[arg(long, hide = true, value_name = "RATE:CLAIM", value_parser = parse_pair)]
    pub dangerous_test_slow_relay: Option<(u64, u64)>,
}

fn parse_pair(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(':').ok_or("expected RATE:CLAIM")?;
    let n = |v: &str| v.parse::<u64>().map_err(|_| format!("{v} is not a number"));
    Ok((n(a)?, n(b)?))
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = s.to_socket_addrs().map_err(|e| format!("not HOST:PORT ({e})"))?;
    addrs.next().ok_or_else(|| format!("{s} resolves to no address"))
}

fn parse_param(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let value: i64 = value.parse().map_err(|_| format!("{value} is not an integer"))?;
    allium_directory::params::spec(name).ok_or(format!("unknown consensus parameter {name}"))?;
    allium_directory::params::check(name, value).map_err(|e| e.to_string())?;
    Ok((name.to_string(), value))
}

/// Runs `allium testnet` until a stop signal.
pub fn run(args: TestnetArgs) -> ExitCode {
    let counts = Counts {
        authorities: args.authorities,
        relays: args.relays,
        exits: args.exits,
        strict_exits: args.strict_exits,
        clients: args.clients,
    };
    if let Err(e) = counts.validate() {
        eprintln!("allium testnet: {e}");
        return ExitCode::from(2);
    }
    if args.dangerous_test_mutating_hsdirs > counts.relays - counts.exits {
        eprintln!("allium testnet: --dangerous-test-mutating-hsdirs must be at most the number of non-exit relays ({})", counts.relays - counts.exits);
        return ExitCode::from(2);
    }
    if args.dangerous_test_blackhole_relays > counts.relays - counts.exits {
        eprintln!("allium testnet: --dangerous-test-blackhole-relays must be at most the number of non-exit relays ({})", counts.relays - counts.exits);
        return ExitCode::from(2);
    }
    let faults = layout::Faults {
        corrupt_after: args.dangerous_test_corrupt_after,
        blackhole_relays: args.dangerous_test_blackhole_relays,
        duplicate_introduce2: args.dangerous_test_duplicate_introduce2,
        mutating_hsdirs: args.dangerous_test_mutating_hsdirs,
        link_delay_ms: args.link_delay_ms,
        bandwidth_scan: args.bandwidth_scan,
        slow_relay: args.dangerous_test_slow_relay,
        stop_forwarding_after: args.dangerous_test_stop_forwarding_after,
        inject_from_middle: match args.dangerous_test_inject_from_middle.as_deref() {
            Some("drop") => Some("drop"),
            Some("relay_early") => Some("relay_early"),
            Some(_) => Some("introduce_ack"),
            None => None,
        },
    };
    // Current-thread runtime on the main thread: nodes are spawned from this thread, which lives
    // as long as the process, so their parent-death signal fires only when we are gone.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("allium testnet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(orchestrate(args, counts, faults))
}

async fn orchestrate(args: TestnetArgs, counts: Counts, faults: layout::Faults) -> ExitCode {
    let mut stop = match NodeSignals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("allium testnet: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("allium testnet: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = match prepare_dir(args.dir.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("allium testnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("testnet directory: {}", dir.display());

    let started = Instant::now();
    // Lives as long as the test network when it is the onion service's target.
    let web = match args.hs_target {
        Some(_) => None,
        None => match web::WebServer::start().await {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("allium testnet: cannot start the built-in web server: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let onion_target = args.hs_target.or(web.as_ref().map(|w| w.addr)).expect("a target either way");
    let mut procs: Vec<NodeProc> = Vec::new();
    let plan = Plan { counts, socks_port: args.socks_port, http_connect_port: args.http_connect_port, faults, params: &args.params, onion_target, voting_interval: args.voting_interval };
    let outcome = tokio::select! {
        r = bring_up(&dir, &exe, &plan, &mut procs) => Ok(r),
        sig = stop.recv_stop() => Err(sig),
    };
    let Ready { socks, http_connect, onion_host } = match outcome {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => {
            eprintln!("allium testnet: {e}");
            if !procs.is_empty() {
                eprintln!("stopping the {} node process(es) started; configs and logs remain in {}", procs.len(), dir.display());
                spawn::stop_all(&mut procs, STOP_GRACE).await;
            }
            return ExitCode::FAILURE;
        }
        Err(sig) => {
            println!("{sig} during startup: stopping {} node(s)", procs.len());
            spawn::stop_all(&mut procs, STOP_GRACE).await;
            return ExitCode::from(130);
        }
    };

    print_ready(&dir, counts, socks, started.elapsed());
    if let Some(h) = http_connect {
        println!("HTTP CONNECT proxy: {h}   (curl --proxytunnel --proxy http://{h} ...)");
    }
    let target_label = if web.is_some() { "the built-in web server".to_string() } else { onion_target.to_string() };
    println!("onion service: {onion_host}   (hosted by node hs, port {} -> {target_label})", layout::ONION_SERVICE_PORT);
    println!("  waiting for the client to reach it; DIR/testnet.env gets ONION_HOST when it does");
    let reach = tokio::spawn(reach_onion_service(dir.clone(), socks, http_connect, onion_host));

    // Running: report nodes that exit (tests kill some on purpose), until a stop signal.
    let sig = loop {
        tokio::select! {
            sig = stop.recv_stop() => break sig,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for n in procs.iter_mut() {
                    if let Some(status) = n.poll_exit() {
                        eprintln!(
                            "note: {} (pid {}) exited with {status}; see {}",
                            n.spec.name,
                            n.pid(),
                            n.spec.log_path().display()
                        );
                    }
                }
            }
        }
    };
    reach.abort();
    drop(web);
    println!("{sig}: stopping {} nodes", procs.len());
    spawn::stop_all(&mut procs, STOP_GRACE).await;
    println!("all nodes stopped; configs and logs remain in {}", dir.display());
    ExitCode::SUCCESS
}

/// Creates (or reuses) the testnet directory and removes the readiness files of an earlier run.
fn prepare_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            d.to_path_buf()
        }
        None => fresh_temp_dir()?,
    };
    let dir = dir.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    for stale in ["nodes", "testnet.env"] {
        match std::fs::remove_file(dir.join(stale)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove old {}: {e}", dir.join(stale).display())),
        }
    }
    Ok(dir)
}

fn fresh_temp_dir() -> Result<PathBuf, String> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    for attempt in 0..100u32 {
        let d = std::env::temp_dir().join(format!("allium-testnet-{}-{:08x}", std::process::id(), nanos.wrapping_add(attempt)));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", d.display())),
        }
    }
    Err("cannot create a fresh temporary directory".into())
}

/// What to bring up.
struct Plan<'a> {
    counts: Counts,
    socks_port: u16,
    http_connect_port: Option<u16>,
    faults: layout::Faults,
    params: &'a [(String, i64)],
    onion_target: SocketAddr,
    voting_interval: u64,
}

/// A test network that is up.
struct Ready {
    /// The client's SOCKS address and HTTP CONNECT address, if any.
    socks: SocketAddr,
    http_connect: Option<SocketAddr>,
    /// The onion service's `….allium` name.
    onion_host: String,
}

/// Steps 1–5. Every process started is pushed to `procs` at once, so the caller can stop it
/// whatever happens.
async fn bring_up(dir: &Path, exe: &Path, plan: &Plan<'_>, procs: &mut Vec<NodeProc>) -> Result<Ready, String> {
    let Plan { counts, socks_port, http_connect_port, faults, params, onion_target, voting_interval } = *plan;
    // 1. Keys and configs.
    let mut nodes = layout::plan(dir, counts, socks_port, http_connect_port).map_err(|e| e.to_string())?;
    for n in nodes.iter_mut() {
        // An authority's identity is kept in place.
        let dir = n.dir.clone();
        layout::make_keys(n, &dir, &dir)?;
    }
    for n in &nodes {
        let mut text = layout::render_config(n, &nodes, voting_interval, &faults, onion_target);
        if n.role == Role::Authority && !params.is_empty() {
            text.push_str("\n[authority.params]\n");
            for (k, v) in params {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        layout::write_atomic(&n.config_path(), &text).map_err(|e| format!("cannot write {}: {e}", n.config_path().display()))?;
    }
    let hs = nodes.iter().find(|n| n.role == Role::OnionService).expect("plan has an hs node");
    // The address the hs node will print: its key is created here, as the node would.
    let service = allium_client::onion_service::OnionServiceConfig {
        name: layout::ONION_SERVICE_NAME.into(),
        ports: vec![format!("{} -> {onion_target}", layout::ONION_SERVICE_PORT)],
        ..Default::default()
    };
    let onion_host = service.load_or_create_address(&hs.dir).map_err(|e| format!("hs: onion service key: {e}"))?.to_host();
    println!(
        "[1/5] generated keys and configs for {} nodes ({} authorities, {} relays of which {} exits, 1 client, 1 onion service)",
        nodes.len(),
        counts.authorities,
        counts.relays,
        counts.exits
    );

    // 2. Authorities.
    let first = procs.len();
    for n in nodes.iter().filter(|n| n.role == Role::Authority) {
        procs.push(spawn::spawn(exe, n).map_err(|e| format!("cannot start {}: {e}", n.name))?);
    }
    let end = procs.len();
    wait_listening(procs, first..end, "directory port").await?;
    println!("[2/5] {} authorities up (directory ports answering)", counts.authorities);

    // 3. Relays and exits.
    let first = procs.len();
    for n in nodes.iter().filter(|n| n.role.is_relay()) {
        procs.push(spawn::spawn(exe, n).map_err(|e| format!("cannot start {}: {e}", n.name))?);
    }
    let end = procs.len();
    wait_listening(procs, first..end, "OR port").await?;
    let strict = if counts.strict_exits > 0 { format!(", {} with the default exit policy", counts.strict_exits) } else { String::new() };
    println!("[3/5] {} relays started ({} exits{strict}; OR ports answering)", counts.relays, counts.exits);

    // 4. Consensus.
    let relays: Vec<&NodeSpec> = nodes.iter().filter(|n| n.role.is_relay()).collect();
    let authorities: Vec<SocketAddr> = nodes.iter().filter(|n| n.role == Role::Authority).map(|n| n.listen).collect();
    wait_consensus(procs, &authorities, &relays).await?;
    println!("[4/5] consensus lists {0}/{0} relays (voting every {voting_interval} s)", relays.len());

    // 5. Client, hs node and probe. The hs node's port is picked again now: the one picked at
    // step 1 can be taken by then, since every test network's hs node makes its outgoing
    // connections from the same address.
    let hs_i = nodes.iter().position(|n| n.role == Role::OnionService).expect("plan has an hs node");
    let hs_ip = nodes[hs_i].ip;
    nodes[hs_i].listen = SocketAddr::new(hs_ip, layout::free_port(hs_ip).map_err(|e| e.to_string())?);
    let text = layout::render_config(&nodes[hs_i], &nodes, voting_interval, &faults, onion_target);
    layout::write_atomic(&nodes[hs_i].config_path(), &text).map_err(|e| format!("cannot write {}: {e}", nodes[hs_i].config_path().display()))?;
    let hs = &nodes[hs_i];
    let clients: Vec<&NodeSpec> = nodes.iter().filter(|n| n.role == Role::Client).collect();
    let client = clients[0];
    let t0 = Instant::now();
    let first = procs.len();
    for n in clients.iter().copied().chain([hs]) {
        procs.push(spawn::spawn(exe, n).map_err(|e| format!("cannot start {}: {e}", n.name))?);
    }
    let end = procs.len();
    wait_listening(procs, first..end, "SOCKS port").await?;
    // Every other client can carry a stream too before the network is called ready.
    for other in &clients[1..] {
        probe_until_crossed(procs, other.listen).await?;
    }
    let outcome = probe_until_crossed(procs, client.listen).await?;
    let how = match outcome {
        ProbeOutcome::RefusedByExit => " (the exit refused the loopback destination, as its policy says)",
        _ => "",
    };
    println!("[5/5] probe stream crossed a 3-hop circuit in {:.1} s{how}", t0.elapsed().as_secs_f64());

    // Ready: the node list first, then the env file that scripts wait for.
    let listed: Vec<(&NodeSpec, u32)> = procs.iter().map(|p| (&p.spec, p.pid())).collect();
    let nodes_path = dir.join("nodes");
    layout::write_atomic(&nodes_path, &layout::render_nodes(&listed)).map_err(|e| format!("cannot write {}: {e}", nodes_path.display()))?;
    let env_path = dir.join("testnet.env");
    layout::write_atomic(&env_path, &layout::render_env(client.listen, client.http_connect, dir, None))
        .map_err(|e| format!("cannot write {}: {e}", env_path.display()))?;
    Ok(Ready { socks: client.listen, http_connect: client.http_connect, onion_host })
}

/// Connects through the client to the onion service until a stream reaches it (so the client
/// holds the service's descriptor), then rewrites `DIR/testnet.env` with `ONION_HOST`.
async fn reach_onion_service(dir: PathBuf, socks: SocketAddr, http_connect: Option<SocketAddr>, onion_host: String) {
    let t0 = Instant::now();
    let mut last = ProbeOutcome::Failed("not tried".into());
    // Each failed attempt may have cost the client descriptor fetches on fresh circuits: back off.
    let mut pause = POLL;
    while t0.elapsed() < ONION_DEADLINE {
        last = probe::onion_probe(socks, &onion_host, layout::ONION_SERVICE_PORT, PROBE_ATTEMPT).await;
        if last == ProbeOutcome::Crossed {
            let env_path = dir.join("testnet.env");
            match layout::write_atomic(&env_path, &layout::render_env(socks, http_connect, &dir, Some(&onion_host))) {
                Ok(()) => {
                    println!("onion service reachable after {:.1} s more: ONION_HOST written to {}", t0.elapsed().as_secs_f64(), env_path.display());
                    println!("  curl --socks5-hostname {socks} http://{onion_host}/");
                }
                Err(e) => eprintln!("allium testnet: cannot write {}: {e}", env_path.display()),
            }
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    eprintln!(
        "warning: the client could not reach the onion service within {} s (last attempt: {last:?}); see {}",
        ONION_DEADLINE.as_secs(),
        dir.join("hs").join("log").display()
    );
}

/// Fails with the log tail of the first node seen to have exited.
fn check_alive(procs: &mut [NodeProc]) -> Result<(), String> {
    for n in procs.iter_mut() {
        n.poll_exit();
        if let Some(status) = n.exited {
            return Err(format!(
                "{} (pid {}) exited during startup with {status}; last lines of {}:\n{}",
                n.spec.name,
                n.pid(),
                n.spec.log_path().display(),
                spawn::log_tail(&n.spec.log_path(), TAIL_LINES)
            ));
        }
    }
    Ok(())
}

/// Waits until every node in `which` accepts TCP connections on its listening address.
async fn wait_listening(procs: &mut [NodeProc], which: std::ops::Range<usize>, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + LISTEN_DEADLINE;
    let mut pending: Vec<usize> = which.collect();
    loop {
        check_alive(procs)?;
        let mut still = Vec::new();
        for i in pending {
            if !probe::port_answers(procs[i].spec.listen).await {
                still.push(i);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let n = &procs[pending[0]];
            return Err(format!(
                "{} has not opened its {what} {} after {} s; last lines of {}:\n{}",
                n.spec.name,
                n.spec.listen,
                LISTEN_DEADLINE.as_secs(),
                n.spec.log_path().display(),
                spawn::log_tail(&n.spec.log_path(), TAIL_LINES)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls every authority's consensus until one lists all `relays`, printing progress.
async fn wait_consensus(procs: &mut [NodeProc], authorities: &[SocketAddr], relays: &[&NodeSpec]) -> Result<(), String> {
    let fingerprints: Vec<String> = relays.iter().map(|r| r.fingerprint.clone()).collect();
    let deadline = Instant::now() + CONSENSUS_DEADLINE;
    let mut best: Option<Vec<bool>> = None;
    let mut last_error = String::from("no authority has served a consensus yet");
    loop {
        check_alive(procs)?;
        for &auth in authorities {
            match probe::fetch_consensus(auth).await {
                Ok(Some(text)) => {
                    let listed = probe::listed(&text, &fingerprints);
                    let count = listed.iter().filter(|&&b| b).count();
                    let improved = match &best {
                        None => true,
                        Some(b) => count > b.iter().filter(|&&x| x).count(),
                    };
                    if improved {
                        if count < relays.len() {
                            println!("      consensus lists {count}/{} relays so far", relays.len());
                        }
                        best = Some(listed);
                    }
                }
                Ok(None) => {}
                Err(e) => last_error = format!("authority at {auth}: {e}"),
            }
        }
        if best.as_ref().is_some_and(|b| b.iter().all(|&x| x)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match best {
                None => format!("no consensus after {} s ({last_error})", CONSENSUS_DEADLINE.as_secs()),
                Some(listed) => {
                    let missing: Vec<&str> =
                        relays.iter().zip(&listed).filter(|(_, &l)| !l).map(|(r, _)| r.name.as_str()).collect();
                    format!(
                        "after {} s the consensus still lacks {} (see their logs under {})",
                        CONSENSUS_DEADLINE.as_secs(),
                        missing.join(", "),
                        relays[0].dir.parent().map(|p| p.display().to_string()).unwrap_or_default()
                    )
                }
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retries a SOCKS5 CONNECT to `localhost:<probe server>` through the client until a stream
/// crosses the network (reply 0x00 plus the probe line, or 0x02 from a refusing exit).
async fn probe_until_crossed(procs: &mut [NodeProc], socks: SocketAddr) -> Result<ProbeOutcome, String> {
    let server = probe::ProbeServer::start().await.map_err(|e| format!("cannot start the probe server: {e}"))?;
    let deadline = Instant::now() + PROBE_DEADLINE;
    let result = loop {
        if let Err(e) = check_alive(procs) {
            break Err(e);
        }
        // A host name, not an IP literal, so the exit does the resolving.
        let outcome = probe::socks_probe(socks, "localhost", server.port, PROBE_ATTEMPT).await;
        match outcome {
            ProbeOutcome::Crossed | ProbeOutcome::RefusedByExit => break Ok(outcome),
            other if Instant::now() >= deadline => {
                let client = procs.last().map(|p| p.spec.log_path()).unwrap_or_default();
                break Err(format!(
                    "no probe stream crossed the network within {} s (last attempt: {other:?}); last lines of {}:\n{}",
                    PROBE_DEADLINE.as_secs(),
                    client.display(),
                    spawn::log_tail(&client, TAIL_LINES)
                ));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    };
    drop(server);
    result
}

fn print_ready(dir: &Path, counts: Counts, socks: SocketAddr, took: Duration) {
    println!();
    println!(
        "testnet ready in {:.1} s: {} authorities, {} relays ({} exits), {} client{}, 1 onion service",
        took.as_secs_f64(),
        counts.authorities,
        counts.relays,
        counts.exits,
        counts.clients,
        if counts.clients == 1 { "" } else { "s" }
    );
    println!("  node list: {}   (name role pid address)", dir.join("nodes").display());
    println!("  logs:      {}/<node>/log", dir.display());
    println!("SOCKS5 proxy: {socks}{}", if counts.clients > 1 { " (the other clients' SOCKS ports are in the node list)" } else { "" });
    println!("Try it from another terminal (serves the current directory, fetches a file from it through 3 relays):");
    println!("  python3 -m http.server 8000 --bind 127.0.0.1 &");
    println!("  head -c 10000000 /dev/urandom > file && curl --socks5-hostname {socks} http://127.0.0.1:8000/file -o file.copy && cmp file file.copy && echo same bytes");
    if counts.strict_exits == counts.exits {
        println!("  (every exit keeps the default policy, so loopback destinations like this one are refused)");
    }
    println!("Ctrl-C stops every node.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs_target_takes_an_address_or_a_local_name() {
        assert_eq!(parse_target("127.0.0.1:8080").unwrap(), "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert!(parse_target("localhost:8080").unwrap().ip().is_loopback());
        assert!(parse_target("127.0.0.1").is_err(), "no port");
        assert!(parse_target("localhost:http").is_err(), "the port is a number");
    }
}
