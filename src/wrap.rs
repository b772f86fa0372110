//! `allium run [--config CLIENT_CONFIG | --socks IP:PORT] -- COMMAND [ARGS…]`: runs a program
//! with its TCP connections and name lookups sent through an Allium client's SOCKS5 proxy, and
//! its UDP refused, as `torsocks` does for Tor.
//!
//! The wrapping is done by two well-kept LD_PRELOAD libraries from Debian, stacked, each for
//! what it does well (neither does all of it alone):
//!
//! - proxychains-ng (package `proxychains4`), loaded first, sends every TCP connection to the
//!   proxy, loopback destinations included (torsocks refuses those, or lets them bypass the
//!   proxy: with it alone a test network, whose destinations are all on loopback, could not be
//!   used). `proxy_dns`: a name the program looks up (not in /etc/hosts) gets a placeholder
//!   address, and connecting to it sends the name itself to the proxy, so the exit resolves it
//!   and `.allium` names work. proxychains passes UDP through untouched.
//! - torsocks (package `torsocks`), loaded second, refuses UDP and raw sockets at `socket()`
//!   (the program gets EPERM, nothing is sent), and catches what proxychains does not hook: a
//!   name looked up with `gethostbyname_r` & co. is resolved through the proxy (SOCKS5 RESOLVE,
//!   0xF0), a `connect` made with `syscall(2)` is sent through the proxy. proxychains' own
//!   connections to the proxy reach torsocks, which lets them through to the loopback proxy
//!   (`AllowOutboundLocalhost 1`; UDP to loopback stays refused).
//!
//! torsocks reports its refusals only at debug level, so it logs to a file in a private
//! temporary directory and `allium run` turns the refusals it reads there into one clear line
//! on stderr each (per process and kind); torsocks' warnings and errors are passed on as they
//! are. The order of the libraries comes from the launchers: `torsocks proxychains4 -q -f CONF
//! COMMAND…` (each prepends its library to LD_PRELOAD).
//!
//! Limits (as for any LD_PRELOAD wrapper): statically linked programs (most Go binaries),
//! setuid/setgid programs and system calls made without libc are not wrapped; the proxy must be
//! on an IPv4 loopback address (proxychains-ng takes IPv4 proxies only, and torsocks lets only
//! loopback connections past it).
//!
//! Exit status: the program's, or 128 + N when signal N killed it; 125 when `allium run` itself
//! fails (config, missing tools, no proxy listening), 127 when COMMAND is not found, 126 when it
//! is not executable. SIGTERM and SIGHUP are passed on to the program; SIGINT and SIGQUIT (which
//! a terminal sends to the whole foreground group) are left to it.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Exit status when `allium run` itself fails.
const OWN_FAILURE: u8 = 125;
/// The Debian packages that provide the two tools.
pub const PACKAGES: &str = "proxychains4 torsocks";
/// How long to wait for the proxy to accept a TCP connection before giving up.
const PROXY_CHECK: Duration = Duration::from_secs(3);
/// How often the torsocks log is read while the program runs.
const LOG_POLL: Duration = Duration::from_millis(100);
/// Past this size, the torsocks log (debug level) is emptied once it has been read.
const LOG_MAX: u64 = 64 << 20;
/// At most this many refusal lines are printed (then one saying more were hidden).
const MAX_NOTICES: usize = 20;

/// Arguments of `allium run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The client's TOML config: its `client.socks_listen` is the proxy used.
    #[arg(long, value_name = "FILE", conflicts_with = "socks")]
    pub config: Option<PathBuf>,
    /// The SOCKS5 address of a running client (IPv4 loopback IP:PORT). Default: the client's
    /// default, 127.0.0.1:9050.
    #[arg(long, value_name = "IP:PORT")]
    pub socks: Option<SocketAddr>,
    /// The program to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub fn run(args: RunArgs) -> ExitCode {
    match prepare_and_run(args) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("allium run: {msg}");
            ExitCode::from(code)
        }
    }
}

/// An exit status and the one line that explains it.
struct Failure(u8, String);

fn own(msg: impl Into<String>) -> Failure {
    Failure(OWN_FAILURE, msg.into())
}

fn prepare_and_run(args: RunArgs) -> Result<u8, Failure> {
    let socks = socks_addr(&args)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let (Some(torsocks), Some(proxychains)) = (find_in_path(&path, "torsocks"), find_in_path(&path, "proxychains4")) else {
        return Err(own(format!(
            "needs proxychains4 and torsocks (Debian packages `{PACKAGES}`): install them with `apt-get install --no-install-recommends {PACKAGES}`"
        )));
    };
    let program = &args.command[0];
    check_program(&path, program)?;
    if let Err(e) = TcpStream::connect_timeout(&SocketAddr::V4(socks), PROXY_CHECK) {
        return Err(own(format!("no SOCKS5 proxy answers at {socks} ({e}): is the Allium client running? (`allium client --config …`, or give --socks / --config)")));
    }
    let scratch = Scratch::create().map_err(|e| own(format!("cannot create a temporary directory: {e}")))?;
    let pc_conf = scratch.0.join("proxychains.conf");
    let ts_conf = scratch.0.join("torsocks.conf");
    let ts_log = scratch.0.join("torsocks.log");
    write_private(&pc_conf, &proxychains_conf(socks)).map_err(|e| own(format!("cannot write {}: {e}", pc_conf.display())))?;
    write_private(&ts_conf, &torsocks_conf(socks)).map_err(|e| own(format!("cannot write {}: {e}", ts_conf.display())))?;
    write_private(&ts_log, "").map_err(|e| own(format!("cannot write {}: {e}", ts_log.display())))?;

    let mut cmd = tokio::process::Command::new(&torsocks);
    cmd.arg(&proxychains).args(["-q", "-f"]).arg(&pc_conf).args(&args.command);
    cmd.env("TORSOCKS_CONF_FILE", &ts_conf)
        .env("TORSOCKS_LOG_LEVEL", "5")
        .env("TORSOCKS_LOG_TIME", "0")
        .env("TORSOCKS_LOG_FILE_PATH", &ts_log);
    // Settings from the environment would override the generated files.
    for var in ["TORSOCKS_TOR_ADDRESS", "TORSOCKS_TOR_PORT", "TORSOCKS_ALLOW_INBOUND", "PROXYCHAINS_SOCKS5_HOST", "PROXYCHAINS_SOCKS5_PORT"] {
        cmd.env_remove(var);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| own(format!("cannot start the async runtime: {e}")))?;
    let name = Path::new(program).file_name().unwrap_or(program).to_string_lossy().into_owned();
    let code = rt.block_on(supervise(cmd, &ts_log, name))?;
    drop(scratch);
    Ok(code)
}

/// The proxy to use: --socks, or the config's `client.socks_listen`, or the client's default;
/// it must be an IPv4 loopback address.
fn socks_addr(args: &RunArgs) -> Result<SocketAddrV4, Failure> {
    let addr = match (&args.socks, &args.config) {
        (Some(a), _) => *a,
        (None, Some(path)) => allium_client::ClientConfig::load(path).map_err(|e| own(e.to_string()))?.client.socks_listen,
        (None, None) => SocketAddr::from((Ipv4Addr::LOCALHOST, 9050)),
    };
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => Ok(a),
        _ => Err(own(format!(
            "the SOCKS5 proxy must be on an IPv4 loopback address (127.0.0.0/8), not {addr}: proxychains-ng takes only IPv4 proxies, and torsocks lets only loopback connections past it"
        ))),
    }
}

/// `name` in the directories of `path` (a PATH value), if it is an executable file there.
fn find_in_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Fails with 127 when the program is not found, 126 when it is not executable (as shells do).
fn check_program(path: &OsStr, program: &OsStr) -> Result<(), Failure> {
    let shown = Path::new(program).display().to_string();
    if program.as_encoded_bytes().contains(&b'/') {
        let p = Path::new(program);
        if !p.exists() {
            return Err(Failure(127, format!("{shown}: no such file")));
        }
        if !is_executable(p) {
            return Err(Failure(126, format!("{shown}: not an executable file")));
        }
        return Ok(());
    }
    match program.to_str().and_then(|name| find_in_path(path, name)) {
        Some(_) => Ok(()),
        None => Err(Failure(127, format!("{shown}: command not found"))),
    }
}

/// proxychains-ng's config: every TCP connection through the one SOCKS5 proxy, names sent to it.
pub fn proxychains_conf(socks: SocketAddrV4) -> String {
    format!(
        "# Written by `allium run` for one run, removed when it ends.\n\
         # Every TCP connection goes through the Allium client's SOCKS5 proxy, or fails.\n\
         strict_chain\n\
         quiet_mode\n\
         # Names (not in /etc/hosts) are sent to the proxy, resolved by the exit.\n\
         proxy_dns\n\
         remote_dns_subnet 224\n\
         # A circuit may take a while to build: wait up to 2 minutes for the proxy's answer.\n\
         tcp_read_time_out 120000\n\
         tcp_connect_time_out 10000\n\
         [ProxyList]\n\
         socks5 {} {}\n",
        socks.ip(),
        socks.port()
    )
}

/// torsocks' config: its own connections (rare: see the module doc) to the same proxy; the
/// loopback proxy reachable for proxychains; IPv6 TCP sockets allowed (proxychains sends them
/// to the proxy), UDP refused.
pub fn torsocks_conf(socks: SocketAddrV4) -> String {
    format!(
        "# Written by `allium run` for one run, removed when it ends.\n\
         TorAddress {}\n\
         TorPort {}\n\
         # proxychains-ng (loaded first) connects to the loopback proxy through torsocks.\n\
         AllowOutboundLocalhost 1\n\
         EnableIPv6 1\n",
        socks.ip(),
        socks.port()
    )
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())
}

/// A private (0700) temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let mut n = 0u32;
        loop {
            let dir = std::env::temp_dir().join(format!("allium-run-{}-{nanos:08x}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Scratch(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the command, passing on SIGTERM and SIGHUP and reporting torsocks' refusals while it
/// runs; its exit status.
async fn supervise(mut cmd: tokio::process::Command, log: &Path, program: String) -> Result<u8, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut watcher = LogWatcher::new(log, program);
    let sig = |k: SignalKind| signal(k).map_err(|e| own(format!("cannot handle signals: {e}")));
    // Handled (so that `allium run` outlives them and reports the program's status).
    let (mut term, mut hup, mut int, mut quit) = (sig(SignalKind::terminate())?, sig(SignalKind::hangup())?, sig(SignalKind::interrupt())?, sig(SignalKind::quit())?);
    let mut child = cmd.spawn().map_err(|e| own(format!("cannot start torsocks: {e}")))?;
    let pid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let forward = |s: rustix::process::Signal| {
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, s);
        }
    };
    let mut tick = tokio::time::interval(LOG_POLL);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.map_err(|e| own(format!("waiting for the program: {e}")))?,
            _ = tick.tick() => watcher.poll(),
            _ = term.recv() => forward(rustix::process::Signal::TERM),
            _ = hup.recv() => forward(rustix::process::Signal::HUP),
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
    };
    watcher.poll();
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.saturating_add(s as u8),
        (None, None) => 1,
    })
}

/// Reads the torsocks log as it grows and prints what the user must know.
struct LogWatcher {
    path: PathBuf,
    offset: u64,
    /// The last line read, while incomplete.
    partial: Vec<u8>,
    parser: LogParser,
}

impl LogWatcher {
    fn new(path: &Path, program: String) -> LogWatcher {
        LogWatcher { path: path.to_path_buf(), offset: 0, partial: Vec::new(), parser: LogParser { program, ..LogParser::default() } }
    }

    fn poll(&mut self) {
        let Ok(mut f) = File::options().read(true).write(true).open(&self.path) else { return };
        let Ok(len) = f.metadata().map(|m| m.len()) else { return };
        if len < self.offset {
            self.offset = 0;
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = (&mut f).take(len - self.offset).read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(msg) = self.parser.line(&String::from_utf8_lossy(&line), proc_name) {
                eprintln!("{msg}");
            }
        }
        // Debug logging grows without bound: empty the file once read. torsocks appends, so
        // later lines land at the new end; a line written in between can be lost.
        if self.offset > LOG_MAX && f.set_len(0).is_ok() {
            self.offset = 0;
            self.partial.clear();
        }
    }
}

/// A process's name, from /proc (None once it is gone).
fn proc_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Turns torsocks log lines (`LEVEL torsocks[PID]: message (in f() at file.c:N)`, no time)
/// into the lines to print.
#[derive(Default)]
struct LogParser {
    /// The command's name, for a process gone before its refusal is read.
    program: String,
    /// The type of the last socket each process asked for (SOCK_DGRAM = 2, SOCK_RAW = 3).
    last_type: std::collections::HashMap<u32, i64>,
    /// (pid, kind) pairs already reported.
    reported: HashSet<(u32, &'static str)>,
    notices: usize,
}

impl LogParser {
    fn line(&mut self, line: &str, name_of: impl Fn(u32) -> Option<String>) -> Option<String> {
        let line = line.trim_end();
        let (level, rest) = line.split_once(' ')?;
        let rest = rest.strip_prefix("torsocks[")?;
        let (pid, msg) = rest.split_once("]: ")?;
        let pid: u32 = pid.parse().ok()?;
        if level == "WARNING" || level == "ERROR" {
            return Some(format!("torsocks[{pid}]: {msg}"));
        }
        if let Some(t) = msg.strip_prefix("[socket] Creating socket with domain ") {
            let ty = t.split_once("type ").and_then(|(_, r)| r.split(' ').next()).and_then(|v| v.parse::<i64>().ok());
            if let Some(ty) = ty {
                self.last_type.insert(pid, ty & 0xf);
            }
            return None;
        }
        let kind = if msg.starts_with("IPv4/v6 non TCP socket denied") {
            match self.last_type.get(&pid) {
                Some(2) => "UDP",
                Some(3) => "raw",
                _ => "non-TCP",
            }
        } else if msg.starts_with("[connect] UDP or ICMP stream can't be handled") {
            "UDP"
        } else if msg.starts_with("Non TCP socketpair denied") {
            "socketpair"
        } else if msg.contains("Non localhost inbound connection are not allowed") {
            "inbound"
        } else {
            return None;
        };
        if !self.reported.insert((pid, kind)) {
            return None;
        }
        self.notices += 1;
        if self.notices > MAX_NOTICES {
            return (self.notices == MAX_NOTICES + 1).then(|| "allium run: (further refusals not shown)".to_string());
        }
        let who = match name_of(pid) {
            Some(n) => format!("{n} (pid {pid})"),
            None => format!("pid {pid} (run by `{}`)", self.program),
        };
        let mut out = String::from("allium run: ");
        let _ = match kind {
            "UDP" => write!(out, "refused UDP for {who}: Allium carries only TCP streams, and UDP (DNS, QUIC, …) would go around the network; its UDP socket got \"Operation not permitted\""),
            "raw" => write!(out, "refused a raw socket (ICMP, ping) for {who}: Allium carries only TCP streams; the program got \"Operation not permitted\""),
            "inbound" => write!(out, "refused {who} listening on or accepting from a non-loopback address: Allium carries only outgoing connections"),
            _ => write!(out, "refused a non-TCP socket for {who}: Allium carries only TCP streams; the program got \"Operation not permitted\""),
        };
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_point_at_the_proxy() {
        let socks: SocketAddrV4 = "127.0.0.1:9150".parse().unwrap();
        let pc = proxychains_conf(socks);
        assert!(pc.lines().any(|l| l == "socks5 127.0.0.1 9150"), "{pc}");
        for needed in ["strict_chain", "proxy_dns", "quiet_mode"] {
            assert!(pc.lines().any(|l| l == needed), "{needed} missing:\n{pc}");
        }
        assert!(!pc.contains("\nlocalnet"), "no destination may bypass the proxy");
        let ts = torsocks_conf(socks);
        for needed in ["TorAddress 127.0.0.1", "TorPort 9150", "AllowOutboundLocalhost 1"] {
            assert!(ts.lines().any(|l| l == needed), "{needed} missing:\n{ts}");
        }
        assert!(!ts.contains("AllowOutboundLocalhost 2"), "2 would let UDP to loopback through");
    }

    #[test]
    fn only_ipv4_loopback_proxies() {
        let args = |s: &str| RunArgs { config: None, socks: Some(s.parse().unwrap()), command: vec!["true".into()] };
        assert_eq!(socks_addr(&args("127.3.0.1:1080")).ok(), Some("127.3.0.1:1080".parse().unwrap()));
        for bad in ["[::1]:9050", "192.0.2.1:9050"] {
            let Err(Failure(code, msg)) = socks_addr(&args(bad)) else { panic!("{bad} accepted") };
            assert_eq!(code, OWN_FAILURE);
            assert!(msg.contains("IPv4 loopback"), "{msg}");
        }
        let default = RunArgs { config: None, socks: None, command: vec!["true".into()] };
        assert_eq!(socks_addr(&default).ok(), Some("127.0.0.1:9050".parse().unwrap()));
    }

    #[test]
    fn refusals_become_one_line_per_process_and_kind() {
        let mut p = LogParser::default();
        let name = |_| Some("curl".to_string());
        assert_eq!(p.line("DEBUG torsocks[7]: [socket] Creating socket with domain 2, type 524290 and protocol 0 (in tsocks_socket() at socket.c:32)\n", name), None);
        let udp = p.line("DEBUG torsocks[7]: IPv4/v6 non TCP socket denied. Tor network can't handle it. (in tsocks_socket() at socket.c:75)", name).expect("reported");
        assert!(udp.starts_with("allium run: refused UDP for curl (pid 7)"), "{udp}");
        assert_eq!(p.line("DEBUG torsocks[7]: IPv4/v6 non TCP socket denied. Tor network can't handle it. (in tsocks_socket() at socket.c:75)", name), None, "once per process");
        p.line("DEBUG torsocks[8]: [socket] Creating socket with domain 2, type 3 and protocol 1 (in tsocks_socket() at socket.c:32)", name);
        let raw = p.line("DEBUG torsocks[8]: IPv4/v6 non TCP socket denied. Tor network can't handle it. (in tsocks_socket() at socket.c:75)", |_| None).unwrap();
        assert!(raw.contains("raw socket") && raw.contains("pid 8"), "{raw}");
        let warn = p.line("WARNING torsocks[9]: [connect] Connection to a local address are denied (in tsocks_connect() at connect.c:191)", name).unwrap();
        assert_eq!(warn, "torsocks[9]: [connect] Connection to a local address are denied (in tsocks_connect() at connect.c:191)");
        assert_eq!(p.line("DEBUG torsocks[9]: Connect caught on fd 13 (in tsocks_connect() at connect.c:118)", name), None);
        assert_eq!(p.line("garbage", name), None);
    }

    #[test]
    fn missing_programs_get_shell_exit_codes() {
        let path = OsString::from("/nonexistent-dir");
        assert_eq!(check_program(&path, OsStr::new("curl")).err().map(|f| f.0), Some(127));
        assert_eq!(check_program(&path, OsStr::new("/nonexistent-dir/x")).err().map(|f| f.0), Some(127));
        let not_executable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(check_program(&path, OsStr::new(not_executable)).err().map(|f| f.0), Some(126));
        assert!(check_program(&path, OsStr::new("/bin/sh")).is_ok());
    }
}
