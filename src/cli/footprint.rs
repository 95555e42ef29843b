//! What `upkeep run` does about its own resident memory, measured with
//! `benches/footprint.sh` (README, Performance, has the figures of each
//! step). Called by `run` only: the other commands are short-lived.
//!
//! - `at_start`: one malloc arena instead of one per thread (glibc's
//!   default, up to 8 per core): the threads of the runtime, the blocking
//!   pool, the recorder and the alerts engine each kept freed memory in an
//!   arena of their own; fixed mmap and trim thresholds, so that large
//!   blocks come from `mmap` and go back whole when freed, however many
//!   were freed before; and `MADV_RANDOM` on the binary's own file
//!   mappings, so that a page faulted back in after `settled` does not
//!   read ahead its neighbours.
//! - `settled`: once every probe has ticked, the binary's clean file pages
//!   (code and read-only data) are unmapped with `MADV_DONTNEED`: those
//!   touched only at start (config parsing, clap, migrations, the first
//!   tick of each kind) stay out, those the agent uses fault back in from
//!   the page cache. Only read-only mappings holding no page of their own
//!   are advised: for those the advice changes no contents (a mapping that
//!   start-up relocated, RELRO, holds private copies and is left alone).
//!   `MADV_PAGEOUT` would also evict the pages from the page cache, but the
//!   kernel does it only for a file the process owns or may write: the
//!   service runs as `upkeep` and the binary belongs to root, so it did
//!   nothing there (it did in a bench run as root). From then on,
//!   once a minute, `malloc_trim` hands back the whole free pages inside
//!   the heap: freed blocks between live ones (an API request's SQLite
//!   pages, a rendered page, a query's rows) that the trim threshold, which
//!   only looks at the heap's top, never returns.

use std::time::Duration;

/// How long after start the start-up pages are handed back: every probe
/// has ticked by then at the default intervals, and the API has answered
/// systemd's and the first scrapes.
pub(super) const SETTLE: Duration = Duration::from_secs(60);

/// How often free heap pages are handed back after that.
#[cfg(target_env = "gnu")]
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// glibc's starting mmap and trim thresholds (128 KiB), kept fixed. Left
/// to itself, glibc raises the mmap threshold to the size of each large
/// block freed (and the trim threshold to twice that): after the first
/// access-log tick had freed its 184 KiB latency histogram, every later one
/// came from the heap and stayed resident, and freed heap tops of up to
/// twice that were kept. Setting either threshold turns that off.
#[cfg(target_env = "gnu")]
const MALLOC_THRESHOLD: libc::c_int = 128 * 1024;

pub(super) fn at_start() {
    // SAFETY: mallopt before any thread is started; a failure leaves
    // glibc's default.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_THRESHOLD);
    }
    advise_own_image(libc::MADV_RANDOM);
}

pub(super) async fn settled() {
    tokio::time::sleep(SETTLE).await;
    let unmapped = unmap_clean_image();
    tracing::debug!(
        "start-up pages handed back: {} KiB of the binary's mappings",
        unmapped / 1024
    );
    #[cfg(target_env = "gnu")]
    loop {
        // SAFETY: malloc_trim takes malloc's own lock; it frees nothing
        // in use.
        unsafe {
            libc::malloc_trim(0);
        }
        tokio::time::sleep(TRIM_EVERY).await;
    }
}

/// Gives `advice` for the executable's own clean file mappings (its code
/// and read-only data, as `/proc/self/maps` lists them); returns how many
/// bytes they span. A kernel without the advice ignores it.
fn advise_own_image(advice: libc::c_int) -> usize {
    let Some((exe, maps)) = own_image("maps") else {
        return 0;
    };
    advise(own_clean_mappings(&maps, &exe.to_string_lossy()), advice)
}

/// The executable's path and the text of `/proc/self/FILE`.
fn own_image(file: &str) -> Option<(std::path::PathBuf, String)> {
    Some((
        std::fs::read_link("/proc/self/exe").ok()?,
        std::fs::read_to_string(format!("/proc/self/{file}")).ok()?,
    ))
}

/// Gives `advice` for each range; returns how many bytes the kernel took
/// it for.
fn advise(ranges: Vec<(usize, usize)>, advice: libc::c_int) -> usize {
    ranges
        .into_iter()
        .filter(|&(start, len)| {
            // SAFETY: whole pages of the executable's read-only mappings,
            // with advice that changes none of their contents: the callers
            // give MADV_DONTNEED only for mappings with no private page,
            // whose pages read back the same from the file.
            unsafe { libc::madvise(start as *mut libc::c_void, len, advice) == 0 }
        })
        .map(|(_, len)| len)
        .sum()
}

/// `MADV_DONTNEED` on the executable's read-only mappings that hold no
/// private (anonymous) page, as `/proc/self/smaps` lists them; returns how
/// many bytes they span. Their pages are then the file's, unchanged, and
/// fault back in from it.
fn unmap_clean_image() -> usize {
    let Some((exe, smaps)) = own_image("smaps") else {
        return 0;
    };
    let spanned = advise(
        unshared_clean_mappings(&smaps, &exe.to_string_lossy()),
        libc::MADV_DONTNEED,
    );
    // Unmapped, the pages are still in the page cache, and a fault maps
    // the cached pages around it too (fault-around, 64 KiB): without this
    // the agent's resident code grew back to nearly all of it within a
    // minute. Dropping the file's cached pages that no process maps (any
    // reader may ask) leaves the agent only the pages it faults in.
    if spanned > 0
        && let Ok(file) = std::fs::File::open(&exe)
    {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor; it changes no contents.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    spanned
}

/// The read-only mappings of `exe` in a `/proc/PID/smaps` text whose
/// `Anonymous:` is 0 kB: none of their pages was ever written.
fn unshared_clean_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            let kb = rest.trim().trim_end_matches("kB").trim();
            if let Some(m) = current.take()
                && kb == "0"
            {
                found.push(m);
            }
        } else if line
            .split_ascii_whitespace()
            .next()
            .is_some_and(|w| w.contains('-') && !w.ends_with(':'))
        {
            current = own_clean_mappings(line, exe).into_iter().next();
        }
    }
    found
}

/// The start and length of each read-only (`r-xp`, `r--p`) mapping of
/// `exe` in a `/proc/PID/maps` text.
fn own_clean_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3)?;
            if path != exe || !(perms == "r-xp" || perms == "r--p") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            (b > a).then_some((a, b - a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_read_only_mappings_are_advised() {
        let maps = "\
55d0a0000000-55d0a0200000 r--p 00000000 08:01 1234 /usr/bin/upkeep
55d0a0200000-55d0a0a00000 r-xp 00200000 08:01 1234 /usr/bin/upkeep
55d0a0a00000-55d0a0b00000 r--p 00a00000 08:01 1234 /usr/bin/upkeep
55d0a0b00000-55d0a0b10000 rw-p 00b00000 08:01 1234 /usr/bin/upkeep
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 r-xp 00000000 08:01 99 /usr/bin/upkeep-old
7f0000100000-7f0000200000 r--p 00000000 08:01 77 /usr/lib/locale/C.utf8/LC_CTYPE
";
        assert_eq!(
            own_clean_mappings(maps, "/usr/bin/upkeep"),
            vec![
                (0x55d0a0000000, 0x200000),
                (0x55d0a0200000, 0x800000),
                (0x55d0a0a00000, 0x100000)
            ]
        );
    }

    /// A block past the threshold comes from mmap even after one as large
    /// was freed (glibc's own adjustment would serve it from the heap).
    /// glibc marks such a block in the size word before it (`IS_MMAPPED`,
    /// bit 1), which other threads' allocations cannot disturb.
    #[cfg(target_env = "gnu")]
    #[test]
    fn large_blocks_stay_mapped_after_one_is_freed() {
        const IS_MMAPPED: usize = 0x2;
        let mapped = |v: &Vec<u8>| {
            // SAFETY: a malloc'd block of glibc is preceded by its chunk's
            // size word.
            unsafe { *(v.as_ptr() as *const usize).sub(1) & IS_MMAPPED != 0 }
        };
        at_start();
        for _ in 0..3 {
            let block = std::hint::black_box(vec![1u8; 184 * 1024]);
            assert!(mapped(&block), "a 184 KiB block came from the heap");
            drop(block);
        }
        let small = std::hint::black_box(vec![1u8; 64 * 1024]);
        assert!(!mapped(&small), "a 64 KiB block came from mmap");
    }

    #[test]
    fn only_read_only_mappings_without_private_pages_are_unmapped() {
        let smaps = "\
55d0a0000000-55d0a0200000 r--p 00000000 08:01 1234 /usr/bin/upkeep
Size:               2048 kB
Rss:                 300 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0a0200000-55d0a0a00000 r-xp 00200000 08:01 1234 /usr/bin/upkeep
Size:               8192 kB
Anonymous:             0 kB
55d0a0a00000-55d0a0b00000 r--p 00a00000 08:01 1234 /usr/bin/upkeep
Size:               1024 kB
Anonymous:           512 kB
55d0a0b00000-55d0a0b10000 rw-p 00b00000 08:01 1234 /usr/bin/upkeep
Anonymous:             0 kB
55d0a1000000-55d0a1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
7f0000000000-7f0000010000 r-xp 00000000 08:01 99 /usr/bin/upkeep-old
Anonymous:             0 kB
";
        // The relocated read-only mapping (RELRO: 512 kB of private
        // copies) would lose its relocations, the writable one its data.
        assert_eq!(
            unshared_clean_mappings(smaps, "/usr/bin/upkeep"),
            vec![(0x55d0a0000000, 0x200000), (0x55d0a0200000, 0x800000)]
        );
    }

    /// Run on this test binary itself: its relocated data must survive, so
    /// the code still runs and reads the same statics afterwards.
    #[test]
    fn unmapping_the_running_binarys_clean_pages_loses_nothing() {
        static TABLE: [&str; 3] = ["one", "two", "three"];
        let before: Vec<String> = TABLE.iter().map(|s| s.to_string()).collect();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let found = unshared_clean_mappings(&smaps, &exe.to_string_lossy());
        assert!(!found.is_empty(), "no clean mapping of {exe:?}");
        assert!(unmap_clean_image() > 0);
        let after: Vec<String> = std::hint::black_box(&TABLE)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(before, after);
        assert_eq!(format!("{:?}", std::hint::black_box(3u8)), "3");
    }

    #[test]
    fn the_running_binarys_code_is_found_and_advised() {
        // This test binary's own code: at least one executable mapping.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let found = own_clean_mappings(&maps, &exe.to_string_lossy());
        assert!(!found.is_empty(), "no mapping of {exe:?} in\n{maps}");
        assert!(advise_own_image(libc::MADV_RANDOM) > 0);
    }
}
