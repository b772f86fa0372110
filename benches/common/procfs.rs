//! Reading processes from `/proc` (Linux): CPU time and resident memory, for the benchmarks.

/// `getconf CLK_TCK`, 100 if that fails.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds (every thread), from /proc/PID/stat.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    stat_seconds(&format!("/proc/{pid}/stat"), ticks)
}

/// utime + stime from a `stat` file: a process's (/proc/PID/stat) or one thread's
/// (/proc/PID/task/TID/stat), in seconds.
pub fn stat_seconds(path: &str, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)` one: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// VmRSS of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}
