//! CPU time and peak memory of a process, read from `/proc` (Linux).

use std::time::Duration;

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ, 100 on every
/// architecture Coffer ships for).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds so far.
    pub cpu_secs: f64,
    /// Peak resident set (VmHWM), bytes; 0 once the process has exited.
    pub peak_rss: u64,
    /// Resident set now (VmRSS), bytes; 0 once the process has exited.
    pub rss: u64,
    /// Whether the process has exited and waits to be reaped.
    pub exited: bool,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse(&stat, &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

fn parse(stat: &str, status: &str) -> Option<Sample> {
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let cpu_secs = (ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SEC;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Some(Sample { cpu_secs, peak_rss: kib("VmHWM:"), rss: kib("VmRSS:"), exited: fields.first() == Some(&"Z") })
}

/// Samples `pid` every `every` until it has exited (but is not yet reaped):
/// the last CPU reading and the highest peak seen.
pub fn watch(pid: u32, every: Duration) -> Sample {
    let mut last = Sample::default();
    while let Some(s) = sample(pid) {
        last = Sample { peak_rss: last.peak_rss.max(s.peak_rss), ..s };
        if s.exited {
            break;
        }
        std::thread::sleep(every);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_are_parsed() {
        let stat = "4242 (coffer (x) y) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let status = "Name:\tcoffer\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        let s = parse(stat, status).unwrap();
        assert_eq!((s.cpu_secs, s.peak_rss, s.rss, s.exited), (3.0, 2 << 20, 1000 << 10, false));
        let zombie = parse(&stat.replace(") R ", ") Z "), "").unwrap();
        assert_eq!((zombie.cpu_secs, zombie.peak_rss, zombie.exited), (3.0, 0, true));
        assert!(parse("garbage", "").is_none());
    }

    #[test]
    fn a_busy_child_is_measured_until_it_exits() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let s = watch(child.id(), Duration::from_millis(5));
        assert!(s.exited && s.peak_rss > 0, "{s:?}");
        assert!(child.wait().unwrap().success());
        assert!(sample(child.id()).is_none(), "reaped");
    }
}
