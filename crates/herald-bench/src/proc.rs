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

/// Proportional resident memory of a process, in bytes: its private pages, and each page it shares with others
/// divided by the number of processes sharing it. Summed over processes of one binary, the binary's pages count
/// once, not once a process as in their RSS.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    status_kb(&fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?, "Pss:").map(|kb| kb * 1024)
}

/// Every process below `pid` (its children, theirs, ...), as the machine has them now.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let parent = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| stat_parent(&stat));
        if let Some(parent) = parent {
            parents.push((child, parent));
        }
    }
    let mut found = vec![pid];
    let mut at = 0;
    while at < found.len() {
        let below = found[at];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, parent)| parent == below)
                .map(|&(child, _)| child),
        );
        at += 1;
    }
    found.remove(0);
    found
}

fn stat_parent(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Kernel slab memory of the whole machine, in bytes (socket buffers and structures live there).
pub fn slab_bytes() -> Option<u64> {
    status_kb(&fs::read_to_string("/proc/meminfo").ok()?, "Slab:").map(|kb| kb * 1024)
}

/// What the machine's network stack has had to do over again, since boot: a delta over a run says whether
/// latency measured on loopback is the server's or the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkTrouble {
    /// Packets the kernel dropped because a CPU's input backlog was full (the second column of
    /// /proc/net/softnet_stat, summed over CPUs): on loopback every segment passes through that backlog, which
    /// holds `net.core.netdev_max_backlog` packets, and a dropped segment waits for TCP's retransmission timer.
    pub backlog_drops: u64,
    /// TCP segments sent again (`RetransSegs` of /proc/net/snmp).
    pub retransmitted: u64,
}

impl NetworkTrouble {
    /// The machine's counts now; `None` where /proc does not say.
    pub fn now() -> Option<Self> {
        Some(Self {
            backlog_drops: softnet_drops(&fs::read_to_string("/proc/net/softnet_stat").ok()?)?,
            retransmitted: snmp_field(&fs::read_to_string("/proc/net/snmp").ok()?, "Tcp:", "RetransSegs")?,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            backlog_drops: self.backlog_drops.saturating_sub(before.backlog_drops),
            retransmitted: self.retransmitted.saturating_sub(before.retransmitted),
        }
    }
}

/// The drops of every CPU's line of /proc/net/softnet_stat (hexadecimal, the second column).
fn softnet_drops(text: &str) -> Option<u64> {
    text.lines()
        .map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// One field of /proc/net/snmp, whose sections are a line of names and a line of values, each starting `section`.
fn snmp_field(text: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|line| line.starts_with(section));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names.zip(values).find(|(n, _)| *n == name)?.1.parse().ok()
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
        assert!(pss_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(stat_parent("7 (a) b) S 42 7 7"), Some(42));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(descendants(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(slab_bytes().unwrap() > 0);
        assert_eq!(stat_cpu("1 (a b) S 0 0 0 0 0 0 0 0 0 0 250 150 0 0"), Some(4.0));
    }

    #[test]
    fn reads_the_network_stack() {
        let softnet = "0392f844 00095abd 0000000b 00000000\n03d3506c 0006ed2b 0000000c 00000000\n";
        assert_eq!(softnet_drops(softnet), Some(0x95abd + 0x6ed2b));
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 225023 7\n";
        assert_eq!(snmp_field(snmp, "Tcp:", "RetransSegs"), Some(225_023));
        assert_eq!(snmp_field(snmp, "Tcp:", "Missing"), None);
        let now = NetworkTrouble::now().expect("Linux has both files");
        assert_eq!(
            now.since(now),
            NetworkTrouble {
                backlog_drops: 0,
                retransmitted: 0
            }
        );
    }
}
