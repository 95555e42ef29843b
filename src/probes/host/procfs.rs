//! The host probe's reads of `/proc` that sysinfo made costly at a 1 s tick:
//! network counters from one read of `/proc/net/dev` (sysinfo opens six
//! files per interface under `/sys/class/net`), memory from the four lines
//! of `/proc/meminfo` the readings need, and whether the mount table changed
//! since the last tick (the kernel flags `/proc/self/mounts` to `poll`), so
//! the mount list is re-read only when it did. Each reader keeps its buffer
//! across ticks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

/// Reads a whole `/proc` file into `buf`, reusing its allocation.
fn read_into(path: &str, buf: &mut String) -> std::io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_string(buf).map(|_| ())
}

/// One interface's counters from `/proc/net/dev`, in the order of the host
/// probe's `NET_RATES`: received and transmitted bytes, packets, errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub counters: [u64; 6],
}

/// Parses `/proc/net/dev`: two header lines, then `name: ` and sixteen
/// counters (eight received, eight transmitted). A line that does not parse
/// is skipped rather than read as zeros.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut fields = [0u64; 16];
            let mut n = 0;
            for (slot, field) in fields.iter_mut().zip(rest.split_ascii_whitespace()) {
                *slot = field.parse().ok()?;
                n += 1;
            }
            (n == 16).then(|| NetDev {
                name: name.trim().to_string(),
                counters: [
                    fields[0], fields[8], fields[1], fields[9], fields[2], fields[10],
                ],
            })
        })
        .collect()
}

/// Memory in bytes from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Parses `/proc/meminfo` (values in kB). Available memory is the kernel's
/// `MemAvailable`; a kernel older than 3.14 lacks it, and free + buffers +
/// page cache stands in. `None` without `MemTotal`.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut keys: [Option<u64>; 7] = [None; 7];
    const NAMES: [&str; 7] = [
        "MemTotal",
        "MemAvailable",
        "SwapTotal",
        "SwapFree",
        "MemFree",
        "Buffers",
        "Cached",
    ];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = NAMES.iter().position(|n| *n == key) else {
            continue;
        };
        let kb = value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok();
        keys[i] = kb.map(|kb| kb.saturating_mul(1024));
    }
    let [
        total,
        available,
        swap_total,
        swap_free,
        free,
        buffers,
        cached,
    ] = keys;
    let available = available.or_else(|| {
        free.map(|f| {
            f.saturating_add(buffers.unwrap_or(0))
                .saturating_add(cached.unwrap_or(0))
        })
    });
    Some(MemInfo {
        total: total?,
        available: available.unwrap_or(0),
        swap_total: swap_total.unwrap_or(0),
        swap_free: swap_free.unwrap_or(0),
    })
}

/// The `/proc` readers with their buffers, kept across ticks.
#[derive(Default)]
pub struct Reader {
    buf: String,
}

impl Reader {
    pub fn net_dev(&mut self) -> Vec<NetDev> {
        match read_into("/proc/net/dev", &mut self.buf) {
            Ok(()) => parse_net_dev(&self.buf),
            Err(_) => Vec::new(),
        }
    }

    pub fn meminfo(&mut self) -> Option<MemInfo> {
        read_into("/proc/meminfo", &mut self.buf).ok()?;
        parse_meminfo(&self.buf)
    }
}

/// Tells whether the mount table changed since the last ask. The kernel
/// flags an open `/proc/self/mounts` with `POLLPRI` when a mount is added or
/// removed in the process's namespace; `poll` with no wait clears the flag.
/// Without the file (no `/proc`), every ask answers yes.
pub struct MountWatch {
    file: Option<File>,
    /// True until the first ask: the list has never been read.
    first: bool,
}

impl MountWatch {
    pub fn new() -> MountWatch {
        MountWatch {
            file: File::open("/proc/self/mounts").ok(),
            first: true,
        }
    }

    pub fn changed(&mut self) -> bool {
        let first = std::mem::replace(&mut self.first, false);
        let Some(file) = &mut self.file else {
            return true;
        };
        let mut fd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd and the count says one.
        let rc = unsafe { libc::poll(&mut fd, 1, 0) };
        if rc < 0 {
            return true;
        }
        let flagged = fd.revents & (libc::POLLPRI | libc::POLLERR) != 0;
        if flagged {
            // Reading from the start keeps the file usable for the next poll.
            let _ = file.seek(SeekFrom::Start(0));
        }
        first || flagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9876543   12345    0    0    0     0          0         0  9876543   12345    0    0    0     0       0          0
  eth0:18446744073709551615 200 3 4 5 6 7 8 1000 20 1 0 0 0 0 0
 bad0: 1 2 3
";

    #[test]
    fn net_dev_gives_bytes_packets_and_errors_each_way() {
        let got = parse_net_dev(NET_DEV);
        assert_eq!(
            got,
            [
                NetDev {
                    name: "lo".into(),
                    counters: [9_876_543, 9_876_543, 12_345, 12_345, 0, 0],
                },
                NetDev {
                    name: "eth0".into(),
                    counters: [u64::MAX, 1000, 200, 20, 3, 1],
                },
            ]
        );
    }

    #[test]
    fn net_dev_agrees_with_sysfs_on_this_host() {
        let devs = Reader::default().net_dev();
        let lo = devs
            .iter()
            .find(|d| d.name == "lo")
            .expect("lo in /proc/net/dev");
        let sys = |f: &str| -> u64 {
            std::fs::read_to_string(format!("/sys/class/net/lo/statistics/{f}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        // Counters only grow: sysfs read after /proc is at least as large.
        let after = [
            sys("rx_bytes"),
            sys("tx_bytes"),
            sys("rx_packets"),
            sys("tx_packets"),
            sys("rx_errors"),
            sys("tx_errors"),
        ];
        for (i, (p, s)) in lo.counters.iter().zip(after).enumerate() {
            assert!(*p <= s, "counter {i}: /proc {p} > sysfs {s}");
        }
        assert!(lo.counters[0] > 0, "{lo:?}");
    }

    #[test]
    fn meminfo_reads_the_four_values_in_bytes() {
        let text = "MemTotal:       24730000 kB\nMemFree:         1000 kB\n\
                    MemAvailable:   20000000 kB\nBuffers: 10 kB\nCached: 20 kB\n\
                    SwapTotal:       2048 kB\nSwapFree:        1024 kB\nHugePages_Total: 0\n";
        assert_eq!(
            parse_meminfo(text),
            Some(MemInfo {
                total: 24_730_000 * 1024,
                available: 20_000_000 * 1024,
                swap_total: 2048 * 1024,
                swap_free: 1024 * 1024,
            })
        );
        // An old kernel without MemAvailable: free + buffers + cache.
        let old = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available, 35 * 1024);
        assert_eq!(parse_meminfo("garbage\nMemFree: x kB\n"), None);
    }

    #[test]
    fn meminfo_of_this_host_is_sane() {
        let m = Reader::default().meminfo().expect("/proc/meminfo");
        assert!(m.total > 0 && m.available <= m.total, "{m:?}");
        assert!(m.swap_free <= m.swap_total, "{m:?}");
    }

    #[test]
    fn a_mount_made_after_the_first_ask_is_seen_once() {
        let mut w = MountWatch::new();
        assert!(w.changed(), "the first ask reads the list");
        assert!(!w.changed(), "nothing mounted since");
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test mounts a tmpfs and needs root");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "upkeep-test", path])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs {path}");
        let seen = w.changed();
        let again = w.changed();
        let unmounted = std::process::Command::new("umount")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(seen, "a new mount is a change");
        assert!(!again, "the change is told once");
        assert!(unmounted && w.changed(), "an unmount is a change");
    }
}
