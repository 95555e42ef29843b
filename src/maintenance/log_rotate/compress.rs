//! Compression of a rotated generation: `NAME.N` becomes `NAME.N.gz` (or
//! `.zst`) through a temporary file that is fsynced, decompressed again
//! and compared byte for byte with the original before it takes its name;
//! only then is the original unlinked. The length and CRC-32 of the
//! original are kept, so validation can decompress once more and check.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timestamps, Uid};
use serde::{Deserialize, Serialize};

use crate::maintenance::files::FsError;

/// How rotated generations are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compress {
    pub fn suffix(self) -> &'static str {
        match self {
            Compress::Gzip => ".gz",
            Compress::Zstd => ".zst",
            Compress::None => "",
        }
    }

    /// The compression of a generation's file name suffix.
    pub fn of_suffix(s: &[u8]) -> Compress {
        match s {
            b".gz" => Compress::Gzip,
            b".zst" => Compress::Zstd,
            _ => Compress::None,
        }
    }
}

/// One generation compressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compressed {
    /// The compressed file's path (escaped).
    pub path: String,
    pub raw_bytes: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// A reader of `file` decompressing as `c` says.
pub fn reader(c: Compress, file: File) -> std::io::Result<Box<dyn Read>> {
    let file = BufReader::new(file);
    Ok(match c {
        Compress::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compress::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compress::None => Box::new(file),
    })
}

/// Length and CRC-32 of what `r` yields.
pub fn crc_of(mut r: impl Read) -> std::io::Result<(u64, u32)> {
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((crc.amount() as u64, crc.sum()));
        }
        crc.update(&buf[..n]);
    }
}

/// Compresses `name` in `dir` (whose path is `dir_path`) to `name` +
/// suffix, verified, with the original's mode, owner and times, then
/// unlinks the original. Never called with [`Compress::None`].
pub fn compress(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &OsStr,
    c: Compress,
) -> Result<Compressed, FsError> {
    let path = dir_path.join(name);
    let io =
        |op: &'static str| move |e: std::io::Error| FsError::io(&path_of(dir_path, name), op, &e);
    let src = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::at(&path, "open", e))?;
    let st = rustix::fs::fstat(&src).map_err(|e| FsError::at(&path, "stat", e))?;
    let mut final_name = OsString::from(name);
    final_name.push(c.suffix());
    let mut tmp_name = final_name.clone();
    tmp_name.push(".tmp");
    let final_path = dir_path.join(&final_name);
    // A temporary file left by a crashed run is ours to replace.
    let _ = rustix::fs::unlinkat(dir, tmp_name.as_os_str(), AtFlags::empty());
    let out = rustix::fs::openat(
        dir,
        tmp_name.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| FsError::at(&final_path, "create", e))?;
    let mut input = File::from(rustix::io::dup(&src).map_err(|e| FsError::at(&path, "dup", e))?);
    let mut out = File::from(out);
    let (raw_bytes, crc32) = {
        let mut crc = flate2::Crc::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut w: Box<dyn Write> = match c {
            Compress::Gzip => Box::new(flate2::write::GzEncoder::new(
                &mut out,
                flate2::Compression::default(),
            )),
            Compress::Zstd => Box::new(
                zstd::stream::write::Encoder::new(&mut out, 3)
                    .map_err(io("zstd"))?
                    .auto_finish(),
            ),
            Compress::None => Box::new(&mut out),
        };
        loop {
            let n = input.read(&mut buf).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(io("write compressed"))?;
        }
        w.flush().map_err(io("write compressed"))?;
        drop(w);
        (crc.amount() as u64, crc.sum())
    };
    out.sync_all().map_err(io("fsync"))?;
    // Decompressed again, it must be the original byte for byte.
    let tmp_file = rustix::fs::openat(
        dir,
        tmp_name.as_os_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::at(&final_path, "open", e))?;
    let back = crc_of(reader(c, File::from(tmp_file)).map_err(io("decompress"))?)
        .map_err(io("decompress"))?;
    if back != (raw_bytes, crc32) || raw_bytes != st.st_size as u64 {
        let _ = rustix::fs::unlinkat(dir, tmp_name.as_os_str(), AtFlags::empty());
        return Err(FsError::at(
            &final_path,
            "verify compressed copy",
            rustix::io::Errno::IO,
        ));
    }
    let fd = out.as_fd();
    let _ = rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    );
    rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(|e| FsError::at(&final_path, "chmod", e))?;
    let times = Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(fd, &times).map_err(|e| FsError::at(&final_path, "set times", e))?;
    rustix::fs::renameat(dir, tmp_name.as_os_str(), dir, final_name.as_os_str())
        .map_err(|e| FsError::at(&final_path, "rename", e))?;
    rustix::fs::fsync(dir).map_err(|e| FsError::at(dir_path, "fsync", e))?;
    rustix::fs::unlinkat(dir, name, AtFlags::empty())
        .map_err(|e| FsError::at(&path, "unlink", e))?;
    let bytes = out.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Compressed {
        path: crate::maintenance::files::show(&final_path),
        raw_bytes,
        bytes,
        crc32,
    })
}

fn path_of(dir: &Path, name: &OsStr) -> std::path::PathBuf {
    dir.join(OsString::from_vec(name.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_compression_decompresses_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let fd = crate::maintenance::files::open_dir(dir.path()).unwrap();
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("{i:010} line\n").into_bytes())
            .collect();
        for c in [Compress::Gzip, Compress::Zstd] {
            let name = format!("app.log.{}", c.suffix().len());
            std::fs::write(dir.path().join(&name), &text).unwrap();
            let got = compress(&fd, dir.path(), OsStr::new(&name), c).unwrap();
            assert_eq!(got.raw_bytes, text.len() as u64);
            let f = File::open(dir.path().join(format!("{name}{}", c.suffix()))).unwrap();
            let mut back = Vec::new();
            reader(c, f).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, text, "{c:?}");
            assert!(!dir.path().join(&name).exists(), "the original goes");
            assert!(got.bytes < got.raw_bytes, "{c:?} compresses");
        }
    }
}
