//! Small helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use upkeep::config::HistoryConfig;
use upkeep::store::writer::{RunInfo, Writer};

/// The `upkeep` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_upkeep"))
}

/// Runs `upkeep ARGS` with logs at warn level and no inherited config.
pub fn upkeep(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("UPKEEP_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env("UPKEEP_LOG", "warn")
        .output()
        .expect("running upkeep")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("upkeep-test-")
        .tempdir()
        .expect("temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p
}

pub fn run_info() -> RunInfo {
    RunInfo {
        version: "test".into(),
        hostname: "test-host".into(),
        pid: std::process::id(),
    }
}

/// A writer on a fresh history file in `dir`, at time `now`.
pub fn temp_writer(dir: &Path, history: &HistoryConfig, now: i64) -> Writer {
    Writer::open(dir, history, now, &run_info())
        .expect("opening history")
        .0
}
