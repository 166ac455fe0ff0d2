//! Memory and CPU of processes, from `/proc`.

use std::{collections::BTreeSet, fs};

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `utime`/`stime` in `/proc/PID/stat` (`getconf CLK_TCK`).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Resident set size in KiB (`VmRSS`), 0 for a process that is gone.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// User and system CPU of a process (all its threads), in clock ticks.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

impl CpuTicks {
    pub fn since(self, before: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    pub fn plus(self, other: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let after = &s[s.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// CPU ticks of one process; zero for a process that is gone.
pub fn cpu_ticks(pid: u32) -> CpuTicks {
    // After ')': state(0) ppid(1) ... utime(11) stime(12).
    stat_fields(pid)
        .and_then(|f| {
            Some(CpuTicks {
                user: f.get(11)?.parse().ok()?,
                system: f.get(12)?.parse().ok()?,
            })
        })
        .unwrap_or_default()
}

/// Parent process ID.
pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> BTreeSet<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some(pp) = ppid(p) {
                    all.push((p, pp));
                }
            }
        }
    }
    let mut out = BTreeSet::from([pid]);
    loop {
        let before = out.len();
        for &(p, pp) in &all {
            if out.contains(&pp) {
                out.insert(p);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Sum of RSS over processes, KiB.
pub fn rss_kib_sum(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Sum of CPU ticks over processes.
pub fn cpu_ticks_sum(pids: &[u32]) -> CpuTicks {
    pids.iter()
        .fold(CpuTicks::default(), |a, &p| a.plus(cpu_ticks(p)))
}

/// Kernel memory that sockets hold, machine-wide: TCP buffer pages (`/proc/net/sockstat`,
/// `TCP: mem`) and slab memory (`/proc/meminfo`, where the socket structures live), in KiB.
pub fn kernel_socket_kib() -> (u64, u64) {
    let tcp_pages = fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut words = line.split_whitespace();
            words.find(|w| *w == "mem")?;
            words.next()?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let slab = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    (tcp_pages * 4, slab)
}
