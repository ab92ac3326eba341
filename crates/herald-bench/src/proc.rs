//! Reading what the kernel knows about a process and about socket memory (Linux /proc).

use std::fs;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on every Linux architecture herald runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds this process has used.
pub fn self_cpu_secs() -> Option<f64> {
    stat_cpu(&fs::read_to_string("/proc/self/stat").ok()?)
}

fn stat_cpu(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kb(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmRSS:").map(|kb| kb * 1024)
}

/// Kernel slab memory of the whole machine, in bytes (socket buffers and structures live there).
pub fn slab_bytes() -> Option<u64> {
    status_kb(&fs::read_to_string("/proc/meminfo").ok()?, "Slab:").map(|kb| kb * 1024)
}

fn status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(self_cpu_secs().is_some());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(slab_bytes().unwrap() > 0);
        assert_eq!(stat_cpu("1 (a b) S 0 0 0 0 0 0 0 0 0 0 250 150 0 0"), Some(4.0));
    }
}
