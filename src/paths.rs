//! Where the agent finds its config and keeps its data when the command line
//! does not say.

use std::path::{Path, PathBuf};

/// The config file used when `--config` is not given: `$UPKEEP_CONFIG`, else
/// `/etc/upkeep/agent.toml` if it exists, else none (built-in defaults).
pub fn default_config() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UPKEEP_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let etc = Path::new("/etc/upkeep/agent.toml");
    etc.exists().then(|| etc.to_path_buf())
}

/// The data dir: the command line, else `agent.data_dir`, else systemd's
/// `$STATE_DIRECTORY`, else `/var/lib/upkeep` for root, else
/// `$XDG_STATE_HOME/upkeep` or `~/.local/state/upkeep`.
pub fn data_dir(cli: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = cli.or(config) {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("STATE_DIRECTORY").filter(|p| !p.is_empty()) {
        // systemd may list several, separated by ':'; the first is ours.
        let s = p.to_string_lossy().to_string();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/upkeep");
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("upkeep");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(home).join(".local/state/upkeep");
    }
    PathBuf::from("upkeep-data")
}
