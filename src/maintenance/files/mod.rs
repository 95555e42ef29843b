//! What the file kinds (`file_cleanup`, `log_rotate`) share: names of any
//! bytes shown escaped (`escape`, `unescape`), errors that name the path
//! and the errno (`FsError`), which files some process holds open (one
//! scan of `/proc/*/fd`: `OpenFiles`), directories opened one component
//! at a time without following a symbolic link (`open_dir_chain`), and
//! the quarantine where removed files wait until their run's backup is
//! pruned (`quarantine.rs`).

pub mod quarantine;

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatVfs};
use rustix::io::Errno;

use super::TaskError;

/// A file name or path of any bytes as one printable line: printable ASCII
/// stays, `\` doubles, newline and tab are `\n` and `\t`, anything else
/// (control bytes, invalid UTF-8, non-ASCII) is `\xNN`. [`unescape`]
/// reverses it exactly.
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The bytes [`escape`] wrote; `None` for text it cannot have written.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(out)
}

/// A path shown escaped.
pub fn show(path: &Path) -> String {
    escape(path.as_os_str().as_bytes())
}

/// The symbolic name of an errno, for messages an operator greps for.
pub fn errno_name(e: Errno) -> &'static str {
    match e {
        Errno::ROFS => "EROFS",
        Errno::ACCESS => "EACCES",
        Errno::PERM => "EPERM",
        Errno::NOENT => "ENOENT",
        Errno::XDEV => "EXDEV",
        Errno::NOSPC => "ENOSPC",
        Errno::BUSY => "EBUSY",
        Errno::LOOP => "ELOOP",
        Errno::NOTDIR => "ENOTDIR",
        Errno::NOTEMPTY => "ENOTEMPTY",
        Errno::EXIST => "EEXIST",
        Errno::IO => "EIO",
        Errno::DQUOT => "EDQUOT",
        Errno::OPNOTSUPP => "EOPNOTSUPP",
        Errno::INVAL => "EINVAL",
        Errno::WOULDBLOCK => "EWOULDBLOCK",
        Errno::MFILE => "EMFILE",
        Errno::SRCH => "ESRCH",
        _ => "errno",
    }
}

/// A system call on a file that failed: the path (escaped), what was
/// tried, and the errno by name and number ("/var/log/app.log: rename:
/// Read-only file system (EROFS, os error 30)").
#[derive(Debug, Clone, PartialEq)]
pub struct FsError {
    pub path: String,
    pub op: &'static str,
    pub errno: Errno,
}

impl FsError {
    pub fn new(path: impl AsRef<[u8]>, op: &'static str, errno: Errno) -> FsError {
        FsError {
            path: escape(path.as_ref()),
            op,
            errno,
        }
    }

    pub fn at(path: &Path, op: &'static str, errno: Errno) -> FsError {
        FsError::new(path.as_os_str().as_bytes(), op, errno)
    }

    /// From a std error (no errno: EIO stands in).
    pub fn io(path: &Path, op: &'static str, e: &std::io::Error) -> FsError {
        let errno = e
            .raw_os_error()
            .map(Errno::from_raw_os_error)
            .unwrap_or(Errno::IO);
        FsError::at(path, op, errno)
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::io::Error::from(self.errno).to_string();
        // std's text ends with "(os error N)": keep its words, add the name.
        let words = text.split(" (os error").next().unwrap_or(&text);
        write!(
            f,
            "{}: {}: {words} ({}, os error {})",
            self.path,
            self.op,
            errno_name(self.errno),
            self.errno.raw_os_error()
        )
    }
}

impl From<FsError> for TaskError {
    fn from(e: FsError) -> TaskError {
        TaskError::Failed(e.to_string())
    }
}

/// Flags of every directory opened on a walk: never through a symbolic
/// link, never a non-directory, never inherited by a child.
pub fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory `path` (its last component not followed).
pub fn open_dir(path: &Path) -> Result<OwnedFd, FsError> {
    rustix::fs::openat(CWD, path, dir_flags(), Mode::empty())
        .map_err(|e| FsError::at(path, "open directory", e))
}

/// Opens `components` one at a time below `root`, each with `O_NOFOLLOW |
/// O_DIRECTORY`: a component that became a symbolic link (or a file)
/// fails with ELOOP or ENOTDIR instead of redirecting the walk.
/// `expect`, when given, is the (dev, inode) each level must still have.
pub fn open_dir_chain(
    root: &Path,
    components: &[Vec<u8>],
    expect: Option<&[(u64, u64)]>,
) -> Result<OwnedFd, FsError> {
    let mut fd = open_dir(root)?;
    let mut shown = root.as_os_str().as_bytes().to_vec();
    for (i, c) in components.iter().enumerate() {
        shown.push(b'/');
        shown.extend_from_slice(c);
        let name =
            CString::new(c.clone()).map_err(|_| FsError::new(&shown, "open", Errno::INVAL))?;
        fd = rustix::fs::openat(&fd, name.as_c_str(), dir_flags(), Mode::empty())
            .map_err(|e| FsError::new(&shown, "open directory", e))?;
        if let Some(want) = expect.and_then(|e| e.get(i)) {
            let st = rustix::fs::fstat(&fd).map_err(|e| FsError::new(&shown, "stat", e))?;
            if (st.st_dev, st.st_ino) != *want {
                return Err(FsError::new(
                    &shown,
                    "open directory (replaced since the plan)",
                    Errno::STALE,
                ));
            }
        }
    }
    Ok(fd)
}

/// The files some process has open, as (device, inode), from one scan of
/// `/proc/*/fd`. A process that ends or a descriptor that closes while
/// the scan runs is simply missed; one that opens afterwards is caught at
/// removal time by `flock` (or not at all, if it takes no lock: the scan
/// is once per run).
#[derive(Debug, Default)]
pub struct OpenFiles(HashSet<(u64, u64)>);

impl OpenFiles {
    pub fn scan() -> OpenFiles {
        let mut set = HashSet::new();
        for_each_open(|_, dev, ino| {
            set.insert((dev, ino));
        });
        OpenFiles(set)
    }

    pub fn contains(&self, dev: u64, ino: u64) -> bool {
        self.0.contains(&(dev, ino))
    }
}

/// The processes that hold (dev, inode) open now.
pub fn holders(dev: u64, ino: u64) -> Vec<i32> {
    holders_seen(dev, ino).0
}

/// The processes that hold (dev, inode) open now, and how many processes'
/// descriptors could not be read (another user's, without
/// CAP_SYS_PTRACE): those might hold it unseen.
pub fn holders_seen(dev: u64, ino: u64) -> (Vec<i32>, usize) {
    let mut out = Vec::new();
    let unreadable = for_each_open(|pid, d, i| {
        if (d, i) == (dev, ino) && !out.contains(&pid) {
            out.push(pid);
        }
    });
    (out, unreadable)
}

/// Calls `f` for every open file of every process; returns how many
/// processes' descriptor lists could not be read.
fn for_each_open(mut f: impl FnMut(i32, u64, u64)) -> usize {
    let mut unreadable = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let fds = match std::fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreadable += 1;
                continue;
            }
            // Gone since the listing.
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            // stat follows the magic link to the open file itself, so a
            // name with any bytes, or one unlinked since, still matches.
            if let Ok(st) = rustix::fs::statat(CWD, fd.path(), AtFlags::empty()) {
                f(pid, st.st_dev, st.st_ino);
            }
        }
    }
    unreadable
}

/// Free bytes for an unprivileged writer, and the used ratio as the host
/// probe computes it (`used / (used + available)`, as `df`).
pub fn fs_usage(path: &Path) -> Result<(u64, f64), FsError> {
    let s: StatVfs = rustix::fs::statvfs(path).map_err(|e| FsError::at(path, "statvfs", e))?;
    let avail = s.f_bavail * s.f_frsize;
    let used = (s.f_blocks - s.f_bfree) * s.f_frsize;
    let ratio = if used + avail == 0 {
        0.0
    } else {
        used as f64 / (used + avail) as f64
    };
    Ok((avail, ratio))
}

/// The (dev, inode) of an open descriptor.
pub fn id_of(fd: impl AsFd) -> Option<(u64, u64)> {
    rustix::fs::fstat(fd).ok().map(|s| (s.st_dev, s.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_any_bytes_escape_to_one_line_and_back() {
        let names: [&[u8]; 5] = [
            b"plain.log",
            b"new\nline",
            b"back\\slash\\x41",
            b"\xff\xfeinvalid utf-8",
            "caf\u{e9}\t\x01".as_bytes(),
        ];
        for n in names {
            let e = escape(n);
            assert!(!e.contains('\n') && e.is_ascii(), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(n), "{e}");
        }
        assert_eq!(escape(b"a\nb"), "a\\nb");
        assert_eq!(escape(b"\xff"), "\\xff");
        assert_eq!(unescape("bad\\q"), None);
        assert_eq!(unescape("cut\\x4"), None);
    }

    #[test]
    fn errors_name_the_path_and_the_errno() {
        let e = FsError::new(b"/var/log/a\nb", "unlink", Errno::ROFS).to_string();
        assert_eq!(
            e,
            "/var/log/a\\nb: unlink: Read-only file system (EROFS, os error 30)"
        );
        let e = FsError::new(b"/x", "rename", Errno::ACCESS).to_string();
        assert!(e.contains("Permission denied (EACCES, os error 13)"), "{e}");
    }

    #[test]
    fn a_file_held_open_by_a_process_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(&path, b"x").unwrap();
        let st = rustix::fs::stat(&path).unwrap();
        assert!(!OpenFiles::scan().contains(st.st_dev, st.st_ino));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&path).unwrap())
            .spawn()
            .expect("sleep runs");
        let found = OpenFiles::scan().contains(st.st_dev, st.st_ino);
        let by = holders(st.st_dev, st.st_ino);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
        assert_eq!(by, vec![child.id() as i32]);
    }
}
