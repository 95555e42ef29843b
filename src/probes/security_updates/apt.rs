//! The pure half of the Debian/Ubuntu check: what `apt-get --simulate
//! dist-upgrade` says it would install, and the dates of the package
//! lists (`*_InRelease`, `*_Release` under `/var/lib/apt/lists`) the
//! updates come from. The lock probe (`holder`) asks the kernel who holds
//! dpkg's fcntl lock without taking it.

use std::path::Path;

/// One `Inst` line: a package apt would install or upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub package: String,
    /// The version it would install.
    pub version: String,
    /// `(label, suite)` of every archive offering that version, as
    /// `Debian-Security:12/oldstable-security` gives `("Debian-Security",
    /// "oldstable-security")`.
    pub origins: Vec<(String, String)>,
}

impl Pending {
    /// Offered by a security suite (`bookworm-security`,
    /// `jammy-security`, `oldstable-security`).
    pub fn is_security(&self) -> bool {
        self.origins
            .iter()
            .any(|(_, suite)| suite.ends_with("-security"))
    }
}

/// Every `Inst` line of `apt-get --simulate` output, in order. Other lines
/// (`Conf`, `Remv`, the summary) are not updates.
///
/// `Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable,
/// Debian-Security:12/oldstable-security [amd64])`; a new package has no
/// `[old]` part, and a trailing `[]` lists broken dependencies.
pub fn parse_simulate(out: &str) -> Vec<Pending> {
    out.lines().filter_map(parse_inst).collect()
}

fn parse_inst(line: &str) -> Option<Pending> {
    let rest = line.strip_prefix("Inst ")?;
    let (package, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut rest = rest.trim_start();
    if rest.starts_with('[') {
        rest = rest.split_once("] ").map_or("", |(_, r)| r);
    }
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .map_or("", |(i, _)| i);
    let (version, origins) = inner.split_once(' ').unwrap_or((inner, ""));
    // Drop the `[arch]` at the end, then split the archives.
    let origins = origins.rsplit_once(" [").map_or(origins, |(o, _)| o);
    let origins = origins
        .split(", ")
        .filter_map(|o| {
            let (label, rest) = o.split_once(':')?;
            let suite = rest.rsplit_once('/').map_or(rest, |(_, s)| s);
            Some((label.trim().to_string(), suite.trim().to_string()))
        })
        .collect();
    Some(Pending {
        package: package.to_string(),
        version: version.to_string(),
        origins,
    })
}

/// The fields of a `Release`/`InRelease` file that name it and date it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub label: String,
    pub suite: String,
    pub codename: String,
    /// The `Date:` field, unix seconds.
    pub date: Option<i64>,
}

/// Reads the header of a (possibly clear-signed) Release file: up to the
/// first checksum list, which holds no field we need.
pub fn parse_release(text: &str) -> Release {
    let mut r = Release::default();
    for line in text.lines() {
        if line.starts_with("MD5Sum:") || line.starts_with("SHA256:") {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Label" => r.label = v.to_string(),
            "Suite" => r.suite = v.to_string(),
            "Codename" => r.codename = v.to_string(),
            "Date" => {
                r.date = chrono::DateTime::parse_from_rfc2822(&v.replace(" UTC", " +0000"))
                    .ok()
                    .map(|d| d.timestamp())
            }
            _ => {}
        }
    }
    r
}

/// The Release files of the package lists under `root`, unreadable ones
/// left out (their updates' ages stay unknown).
pub fn releases(root: &Path) -> Vec<Release> {
    let dir = root.join("var/lib/apt/lists");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with("_InRelease") || n.ends_with("_Release")
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|b| parse_release(&String::from_utf8_lossy(&b)))
        .collect()
}

/// The oldest date of a list offering `p` from a security suite: the
/// update is at least this old (a list is re-dated when republished, so
/// this is a lower bound).
pub fn list_date(p: &Pending, releases: &[Release]) -> Option<i64> {
    p.origins
        .iter()
        .filter(|(_, suite)| suite.ends_with("-security"))
        .flat_map(|(label, suite)| {
            releases
                .iter()
                .filter(move |r| r.label == *label && (r.suite == *suite || r.codename == *suite))
        })
        .filter_map(|r| r.date)
        .min()
}

/// The pid holding an fcntl write-conflicting lock on `path`, as dpkg and
/// apt take on `lock-frontend` and `lock`. `None`: no lock, or the file
/// cannot be opened (a non-root agent cannot; apt's simulation then runs
/// without knowing).
pub fn holder(path: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only fills it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `f` is open for the duration of the call; `fl` outlives it.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// apt's own words for a lock held by another process: `Could not get
/// lock /var/lib/dpkg/lock-frontend. It is held by process 1234 (apt)`.
pub fn locked_by(stderr: &str) -> Option<i32> {
    let at = stderr.find("held by process ")?;
    let digits: String = stderr[at + 16..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as apt 2.6 (Debian 12) printed them on a real host.
    const SIM: &str = "\
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following packages will be upgraded:
  base-files libgcrypt20
Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Conf base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Inst libgcrypt20-dev [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []
Inst liblzma-dev [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64]) []
Inst newpkg (1.0 Debian:12.15/oldstable [all])
2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
";

    #[test]
    fn inst_lines_with_their_origins() {
        let p = parse_simulate(SIM);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].package, "base-files");
        assert_eq!(p[0].version, "12.4+deb12u15");
        assert!(!p[0].is_security());
        assert_eq!(
            p[1].origins,
            vec![
                ("Debian".into(), "oldstable".into()),
                ("Debian-Security".into(), "oldstable-security".into())
            ]
        );
        assert!(p[1].is_security() && p[2].is_security());
        assert_eq!(p[3].package, "newpkg");
        assert_eq!(p[3].version, "1.0");
        let ubuntu = "Inst libssl3 [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.18 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])";
        assert!(parse_simulate(ubuntu)[0].is_security());
    }

    #[test]
    fn release_dates_match_security_origins() {
        let text = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nLabel: Debian-Security\nSuite: oldstable-security\nVersion: 12\nCodename: bookworm-security\nDate: Wed, 02 Dec 2026 23:13:43 UTC\nSHA256:\n Date: nope\n";
        let r = parse_release(text);
        assert_eq!(r.suite, "oldstable-security");
        assert_eq!(r.codename, "bookworm-security");
        assert_eq!(r.date, Some(1_796_253_223));
        let p = &parse_simulate(SIM)[2];
        assert_eq!(list_date(p, std::slice::from_ref(&r)), Some(1_796_253_223));
        assert_eq!(list_date(&parse_simulate(SIM)[0], &[r]), None);
    }

    #[test]
    fn apt_names_the_lock_holder() {
        let e = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)\nE: Unable to acquire";
        assert_eq!(locked_by(e), Some(4242));
        assert_eq!(locked_by("E: something else"), None);
    }
}
