//! The built-in `[host]` probe: CPU, load, memory, swap, filesystems, network
//! rates and uptime of the machine the agent runs on. Built by
//! `probes::build`, driven by the runner like any other probe.
//!
//! One sysinfo state lives across ticks and only what is read is refreshed.
//! sysinfo blocks (statvfs on a hung mount can block for good), so each tick
//! runs on the blocking pool with the state moved in and back out; a tick the
//! runner gives up on loses the state, and the next tick starts a fresh one.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sysinfo::{DiskRefreshKind, Disks, System};

mod config;
mod procfs;

pub use config::{HostConfig, Levels, thresholds};

use super::{Probe, ProbeError};
use crate::sample::{Reading, Unit};

/// Filesystem types that hold no user data (kernel views, memory, snaps).
/// `overlay` is absent on purpose: it is the root filesystem of a container.
const PSEUDO_FS: &str = "autofs binfmt_misc bpf cgroup cgroup2 configfs debugfs devpts devtmpfs \
    efivarfs fusectl hugetlbfs mqueue nsfs proc pstore ramfs rootfs rpc_pipefs securityfs \
    selinuxfs squashfs sysfs tmpfs tracefs";

/// The running totals of `NET_RATES`' counters, in the same order, exported
/// as counters.
const NET_TOTALS: [&str; 6] = [
    "net_rx_bytes_total",
    "net_tx_bytes_total",
    "net_rx_packets_total",
    "net_tx_packets_total",
    "net_rx_errors_total",
    "net_tx_errors_total",
];

/// Network counters kept between ticks, in this order, and the rate each becomes.
const NET_RATES: [(&str, Unit); 6] = [
    ("net_rx_bytes_per_second", Unit::BytesPerSecond),
    ("net_tx_bytes_per_second", Unit::BytesPerSecond),
    ("net_rx_packets_per_second", Unit::PerSecond),
    ("net_tx_packets_per_second", Unit::PerSecond),
    ("net_rx_errors_per_second", Unit::PerSecond),
    ("net_tx_errors_per_second", Unit::PerSecond),
];

/// What to watch, fixed at construction.
#[derive(Debug)]
struct Selection {
    /// Mount points; empty = every real filesystem. A configured mount point
    /// that is not mounted, or that sysinfo does not list (tmpfs, and
    /// nfs/cifs/autofs, whose statvfs may hang), is simply not reported.
    disks: Vec<String>,
    /// Interface names; empty = every interface `ignore` does not match.
    interfaces: Vec<String>,
    /// Patterns of interfaces left out when `interfaces` is empty.
    ignore: Vec<String>,
}

impl Selection {
    fn watches_interface(&self, name: &str) -> bool {
        if self.interfaces.is_empty() {
            !self.ignore.iter().any(|p| wildcard_match(p, name))
        } else {
            self.interfaces.iter().any(|i| i == name)
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (possibly none) and every other character for itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

pub struct HostProbe {
    selection: Arc<Selection>,
    /// `None` before the first tick and after a tick that never came back.
    state: Option<Box<State>>,
    /// Blocking calls started and not yet returned (including abandoned ones).
    in_flight: Arc<AtomicUsize>,
}

impl HostProbe {
    pub fn new(config: &HostConfig) -> HostProbe {
        HostProbe {
            selection: Arc::new(Selection {
                disks: config.disks.clone(),
                interfaces: config.interfaces.clone(),
                ignore: config.ignore_interfaces.clone(),
            }),
            state: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Decrements the in-flight count when the blocking call ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe for HostProbe {
    async fn sample(&mut self) -> Result<Vec<Reading>, ProbeError> {
        // An abandoned call still running is almost surely stuck in statvfs on
        // a hung mount: leave filesystems out until it returns rather than
        // strand one more blocking thread on the same mount every tick.
        let with_disks = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let guard = InFlight(Arc::clone(&self.in_flight));
        let selection = Arc::clone(&self.selection);
        let state = self.state.take();
        let joined = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut state = state.unwrap_or_else(|| Box::new(State::new()));
            let readings = state.tick(&selection, with_disks);
            (state, readings)
        })
        .await;
        match joined {
            Ok((state, readings)) => {
                self.state = Some(state);
                Ok(readings)
            }
            Err(e) if e.is_panic() => Err(ProbeError::Failed("host: sampling panicked".into())),
            Err(e) => Err(ProbeError::Failed(format!("host: sampling failed: {e}"))),
        }
    }
}

/// The long-lived sysinfo handles and `/proc` readers, and what rates need
/// from the last tick.
struct State {
    system: System,
    disks: Disks,
    /// Whether the mount list must be re-read this tick.
    mounts: procfs::MountWatch,
    proc: procfs::Reader,
    /// CPU usage is a difference of two reads spaced apart: when the first was.
    cpu_first_read: Option<Instant>,
    /// Per interface: the `NET_RATES` counters at `net_at`.
    net_prev: HashMap<String, [u64; 6]>,
    net_at: Option<Instant>,
}

impl State {
    fn new() -> State {
        State {
            system: System::new(),
            disks: Disks::new(),
            mounts: procfs::MountWatch::new(),
            proc: procfs::Reader::default(),
            cpu_first_read: None,
            net_prev: HashMap::new(),
            net_at: None,
        }
    }

    fn tick(&mut self, selection: &Selection, with_disks: bool) -> Vec<Reading> {
        let mut out = Vec::new();
        self.cpu(&mut out);
        self.memory(&mut out);
        let load = System::load_average();
        out.push(Reading::new("load1", load.one, Unit::None));
        out.push(Reading::new("load5", load.five, Unit::None));
        out.push(Reading::new("load15", load.fifteen, Unit::None));
        let uptime = System::uptime();
        if uptime > 0 {
            out.push(Reading::new("uptime_seconds", uptime as f64, Unit::Seconds));
        }
        if with_disks {
            self.filesystems(&selection.disks, &mut out);
        }
        self.network(selection, &mut out);
        // A value that cannot be measured is a gap, never a NaN.
        out.retain(|r| r.value.is_finite());
        out
    }

    fn cpu(&mut self, out: &mut Vec<Reading>) {
        // Reads /proc/stat only (no frequency, no processes).
        self.system.refresh_cpu_usage();
        let first = *self.cpu_first_read.get_or_insert_with(Instant::now);
        if first.elapsed() < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            return;
        }
        let ratio = |percent: f32| (f64::from(percent) / 100.0).clamp(0.0, 1.0);
        out.push(Reading::new(
            "cpu_used_ratio",
            ratio(self.system.global_cpu_usage()),
            Unit::Ratio,
        ));
        for (i, cpu) in self.system.cpus().iter().enumerate() {
            let r = Reading::new("cpu_core_used_ratio", ratio(cpu.cpu_usage()), Unit::Ratio);
            out.push(r.with_label("core", &i.to_string()));
        }
    }

    fn memory(&mut self, out: &mut Vec<Reading>) {
        // Reads /proc/meminfo once, RAM and swap together.
        let Some(m) = self.proc.meminfo() else {
            return;
        };
        if m.total > 0 {
            let used = m.total.saturating_sub(m.available);
            out.push(bytes("memory_total_bytes", m.total));
            out.push(bytes("memory_used_bytes", used));
            out.push(bytes("memory_available_bytes", m.available));
            out.extend(
                ratio(used, m.total).map(|r| Reading::new("memory_used_ratio", r, Unit::Ratio)),
            );
        }
        let used = m.swap_total.saturating_sub(m.swap_free);
        out.push(bytes("swap_total_bytes", m.swap_total));
        out.push(bytes("swap_used_bytes", used));
        out.extend(
            ratio(used, m.swap_total).map(|r| Reading::new("swap_used_ratio", r, Unit::Ratio)),
        );
    }

    fn filesystems(&mut self, wanted: &[String], out: &mut Vec<Reading>) {
        // Re-reads the mount list only when the kernel says it changed, and
        // then only the list: space and inodes come from one statvfs of ours
        // per watched mount, so sysinfo's statvfs, disk-kind lookup in /sys
        // and /proc/diskstats read are all skipped.
        if self.mounts.changed() {
            self.disks
                .refresh_specifics(true, DiskRefreshKind::nothing());
        }
        let mut seen = HashSet::new();
        for disk in self.disks.list() {
            let mount = disk.mount_point().to_string_lossy();
            let fs_type = disk.file_system().to_string_lossy();
            let selected = if wanted.is_empty() {
                // A file bind-mounted into a container (/etc/hosts) is not a filesystem.
                is_real_fs(&fs_type, &mount) && disk.mount_point().is_dir()
            } else {
                wanted.iter().any(|w| *w == mount)
            };
            if selected
                && seen.insert(mount.to_string())
                && let Some(stats) = statvfs(disk.mount_point())
            {
                out.extend(disk_readings(&mount, &stats));
            }
        }
    }

    fn network(&mut self, selection: &Selection, out: &mut Vec<Reading>) {
        // One read of /proc/net/dev: every interface's counters.
        let devs = self.proc.net_dev();
        let now = Instant::now();
        let secs = self
            .net_at
            .replace(now)
            .map(|at| now.duration_since(at).as_secs_f64());
        let mut current = HashMap::new();
        for procfs::NetDev { name, counters } in devs {
            if !selection.watches_interface(&name) {
                continue;
            }
            for (metric, v) in NET_TOTALS.iter().zip(counters) {
                out.push(
                    Reading::new(metric, v as f64, Unit::Total).with_label("interface", &name),
                );
            }
            if let (Some(secs), Some(prev)) = (secs, self.net_prev.get(&name)) {
                for (i, (metric, unit)) in NET_RATES.iter().enumerate() {
                    if let Some(v) = rate(prev[i], counters[i], secs) {
                        out.push(Reading::new(metric, v, *unit).with_label("interface", &name));
                    }
                }
            }
            current.insert(name, counters);
        }
        self.net_prev = current;
    }
}

/// Whether a mount holds data worth watching: not a pseudo filesystem and not
/// under a kernel or runtime tree (`/run/media` holds removable disks).
fn is_real_fs(fs_type: &str, mount: &str) -> bool {
    let under = |dir: &str| {
        mount
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    !PSEUDO_FS.split_whitespace().any(|t| t == fs_type)
        && !["/proc", "/sys", "/dev", "/snap"].into_iter().any(under)
        && (!under("/run") || under("/run/media"))
}

/// Per-second rate between two readings of a counter; `None` when the counter
/// went down (interface reset, 32-bit wrap) or no time passed.
fn rate(prev: u64, cur: u64, secs: f64) -> Option<f64> {
    (cur >= prev && secs > 0.0).then(|| (cur - prev) as f64 / secs)
}

fn bytes(metric: &str, value: u64) -> Reading {
    Reading::new(metric, value as f64, Unit::Bytes)
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64).clamp(0.0, 1.0))
}

/// The fields of `statvfs` the readings need, in blocks of `frsize` bytes.
#[derive(Debug, Clone, Copy)]
struct FsStats {
    frsize: u64,
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
}

#[allow(
    clippy::unnecessary_cast,
    reason = "c_ulong and fsblkcnt_t are 32 bits wide on some targets"
)]
fn statvfs(path: &Path) -> Option<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    let filled = loop {
        // SAFETY: `path` is NUL-terminated and `st` is valid for writes.
        let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break rc == 0;
        }
    };
    if !filled {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(FsStats {
        frsize: st.f_frsize as u64,
        blocks: st.f_blocks as u64,
        bfree: st.f_bfree as u64,
        bavail: st.f_bavail as u64,
        files: st.f_files as u64,
        ffree: st.f_ffree as u64,
    })
}

/// Readings of one filesystem. Used and ratio follow `df`: blocks reserved for
/// root count as unavailable, so the ratio reaches 1 when users can no longer
/// write (`1 - avail/total` would stop at ~0.95 on ext4).
fn disk_readings(mount: &str, s: &FsStats) -> Vec<Reading> {
    let size = |blocks: u64| blocks.saturating_mul(s.frsize);
    let (total, avail) = (size(s.blocks), size(s.bavail));
    if total == 0 {
        return Vec::new();
    }
    let used = total.saturating_sub(size(s.bfree));
    let mut out = vec![
        bytes("disk_total_bytes", total),
        bytes("disk_available_bytes", avail),
        bytes("disk_used_bytes", used),
    ];
    out.extend(
        ratio(used, used.saturating_add(avail))
            .map(|r| Reading::new("disk_used_ratio", r, Unit::Ratio)),
    );
    if s.files > 0 {
        let used = s.files.saturating_sub(s.ffree);
        let count = |metric, v: u64| Reading::new(metric, v as f64, Unit::Count);
        out.push(count("disk_inodes_total", s.files));
        out.push(count("disk_inodes_used", used));
        let r = ratio(used, s.files);
        out.extend(r.map(|r| Reading::new("disk_inodes_used_ratio", r, Unit::Ratio)));
    }
    out.into_iter()
        .map(|r| r.with_label("mount", mount))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn named<'a>(rs: &'a [Reading], prefix: &str) -> Vec<&'a Reading> {
        rs.iter().filter(|r| r.metric.starts_with(prefix)).collect()
    }

    fn one(rs: &[Reading], metric: &str) -> f64 {
        let found: Vec<_> = rs.iter().filter(|r| r.metric == metric).collect();
        assert_eq!(found.len(), 1, "{metric}: {found:?}");
        found[0].value
    }

    fn is_ratio(r: &&Reading) -> bool {
        (0.0..=1.0).contains(&r.value)
    }

    async fn two_ticks(config: HostConfig) -> (Vec<Reading>, Vec<Reading>) {
        let mut p = HostProbe::new(&config);
        let first = p.sample().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (first, p.sample().await.unwrap())
    }

    #[test]
    fn only_real_filesystems_are_watched() {
        for (fs, mount) in [("ext4", "/"), ("overlay", "/"), ("xfs", "/devdata")] {
            assert!(is_real_fs(fs, mount), "{fs} on {mount}");
        }
        assert!(is_real_fs("vfat", "/run/media/usb"));
        for (fs, mount) in [
            ("proc", "/proc"),
            ("sysfs", "/sys"),
            ("tmpfs", "/dev/shm"),
            ("devtmpfs", "/dev"),
            ("cgroup2", "/sys/fs/cgroup"),
            ("squashfs", "/snap/core/1"),
            ("nsfs", "/run/netns/x"),
            ("ext4", "/run/user/1000"),
        ] {
            assert!(!is_real_fs(fs, mount), "{fs} on {mount}");
        }
    }

    #[test]
    fn rate_skips_resets_and_zero_time() {
        assert_eq!(rate(100, 300, 2.0), Some(100.0));
        assert_eq!(rate(100, 100, 2.0), Some(0.0));
        assert_eq!(rate(300, 100, 2.0), None);
        assert_eq!(rate(100, 300, 0.0), None);
    }

    #[test]
    fn disk_readings_follow_df_and_skip_missing_inodes() {
        let (frsize, blocks, bfree, bavail, files, ffree) = (4096, 100, 5, 0, 10, 4);
        let s = FsStats {
            frsize,
            blocks,
            bfree,
            bavail,
            files,
            ffree,
        };
        let rs = disk_readings("/data", &s);
        assert!(
            rs.iter()
                .all(|r| r.labels == [("mount".into(), "/data".into())])
        );
        assert_eq!(one(&rs, "disk_total_bytes"), 409_600.0);
        assert_eq!(one(&rs, "disk_used_bytes"), 95.0 * 4096.0);
        // The 5 free blocks are reserved for root: full for everyone else.
        assert_eq!(one(&rs, "disk_used_ratio"), 1.0);
        assert_eq!(one(&rs, "disk_inodes_used"), 6.0);
        assert_eq!(one(&rs, "disk_inodes_used_ratio"), 0.6);
        let btrfs = FsStats { files: 0, ..s };
        assert!(named(&disk_readings("/", &btrfs), "disk_inodes").is_empty());
        assert!(disk_readings("/", &FsStats { blocks: 0, ..s }).is_empty());
    }

    #[test]
    fn thresholds_follow_config() {
        let c = HostConfig::default();
        let got: Vec<_> = thresholds(&c)
            .into_iter()
            .map(|t| (t.metric, t.degraded, t.unhealthy, t.sustained, t.below))
            .collect();
        let want =
            |m: &str, l: Levels| (m.into(), l.degraded, Some(l.unhealthy), l.sustained, false);
        let want = [
            want("cpu_used_ratio", c.cpu),
            want("memory_used_ratio", c.memory),
            want("disk_used_ratio", c.disk),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn two_ticks_measure_this_host() {
        let (first, second) = two_ticks(HostConfig::default()).await;
        // Not measured yet is a gap, not a zero: no CPU share and no network
        // rate before a second tick (the counters' totals are there at once).
        assert!(named(&first, "cpu_").is_empty());
        assert!(named(&first, "net_").iter().all(|r| r.unit == Unit::Total));
        for rs in [&first, &second] {
            assert!(rs.iter().all(|r| r.value.is_finite()), "{rs:?}");
            assert!(one(rs, "memory_total_bytes") > 0.0);
            assert!((0.0..=1.0).contains(&one(rs, "memory_used_ratio")));
            assert!(one(rs, "load1") >= 0.0 && one(rs, "uptime_seconds") > 0.0);
            let disks = named(rs, "disk_used_ratio");
            assert!(!disks.is_empty() && disks.iter().all(is_ratio), "{disks:?}");
        }
        assert!((0.0..=1.0).contains(&one(&second, "cpu_used_ratio")));
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cores = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let per_core = named(&second, "cpu_core_used_ratio");
        assert_eq!(per_core.len(), cores);
        assert!(per_core.iter().all(is_ratio));
    }

    #[tokio::test]
    async fn configured_mounts_and_interfaces_only() {
        let (disks, interfaces) = (vec!["/".into()], vec!["lo".into()]);
        let (_, second) = two_ticks(HostConfig {
            disks,
            interfaces,
            ..Default::default()
        })
        .await;
        let disk = named(&second, "disk_");
        let root = [("mount".to_string(), "/".to_string())];
        assert!(
            !disk.is_empty() && disk.iter().all(|r| r.labels == root),
            "{disk:?}"
        );
        // Loopback is watched when asked for by name: its rates and its
        // running totals.
        let net = named(&second, "net_");
        let lo = [("interface".to_string(), "lo".to_string())];
        assert_eq!(net.len(), NET_RATES.len() + NET_TOTALS.len(), "{net:?}");
        assert!(net.iter().all(|r| r.labels == lo && r.value >= 0.0));
        let totals = net.iter().filter(|r| r.unit == Unit::Total).count();
        assert_eq!(totals, NET_TOTALS.len(), "{net:?}");
    }

    #[test]
    fn virtual_interfaces_are_left_out_by_default() {
        let d = HostConfig::default();
        let s = Selection {
            disks: Vec::new(),
            interfaces: Vec::new(),
            ignore: d.ignore_interfaces,
        };
        for name in ["lo", "veth1a2b", "docker0", "br-5f3a", "ifb0", "virbr0"] {
            assert!(!s.watches_interface(name), "{name}");
        }
        for name in ["eth0", "ens3", "wlp2s0", "bond0", "lob", "xbr-1"] {
            assert!(s.watches_interface(name), "{name}");
        }
        let named = Selection {
            interfaces: vec!["docker0".into()],
            ..s
        };
        assert!(named.watches_interface("docker0") && !named.watches_interface("eth0"));
        for (p, n, want) in [
            ("*", "", true),
            ("a*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "acb", false),
            ("*b*", "abc", true),
            ("ab*ba", "aba", false),
            ("lo", "lo0", false),
        ] {
            assert_eq!(wildcard_match(p, n), want, "{p} {n}");
        }
    }

    #[tokio::test]
    async fn an_abandoned_tick_starts_fresh_and_leaves_disks_out_while_stuck() {
        let mut p = HostProbe::new(&HostConfig::default());
        p.sample().await.unwrap();
        // Drop ticks after one poll, as the runner's timeout does, until one
        // is caught mid-call (a busy machine may finish one in between).
        let abandoned = (0..100).any(|_| {
            let mut tick = Box::pin(p.sample());
            let waker = std::task::Waker::noop();
            tick.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        });
        assert!(abandoned && p.state.is_none());
        while p.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fresh = p.sample().await.unwrap();
        assert!(named(&fresh, "cpu_").is_empty() && !named(&fresh, "disk_").is_empty());
        // A call that never returns keeps filesystems out of later ticks only.
        p.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stuck = p.sample().await.unwrap();
        assert!(named(&stuck, "disk_").is_empty() && !named(&stuck, "cpu_").is_empty());
    }
}
