//! The baseline's checks, each a function of the host's files under a
//! root: pass, fail or unknown, always with the reason. Nothing here
//! changes the host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::probes::sshd_config as sshd;

/// One check of the baseline: its id, why it matters, how to fix it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CheckDef {
    pub id: &'static str,
    pub rationale: &'static str,
    pub remedy: &'static str,
}

/// Every check, in the order they are reported.
pub const CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "ssh-root-login",
        rationale: "root should not log in over ssh with a password",
        remedy: "set `PermitRootLogin no` (or `prohibit-password`) in /etc/ssh/sshd_config and reload sshd",
    },
    CheckDef {
        id: "ssh-password-auth",
        rationale: "passwords over ssh can be guessed; keys cannot",
        remedy: "set `PasswordAuthentication no` in /etc/ssh/sshd_config and reload sshd",
    },
    CheckDef {
        id: "world-writable",
        rationale: "a file anyone can write is a file anyone can replace",
        remedy: "`chmod o-w` the files listed (or set the sticky bit on shared directories)",
    },
    CheckDef {
        id: "secret-modes",
        rationale: "upkeep's password and token files must not be readable by others",
        remedy: "`chmod 0640` (or stricter) the files listed",
    },
    CheckDef {
        id: "unattended-upgrades",
        rationale: "security updates should install without waiting for someone",
        remedy: "`apt install unattended-upgrades` and `dpkg-reconfigure -plow unattended-upgrades`",
    },
    CheckDef {
        id: "firewall",
        rationale: "only the ports meant to be open should be reachable",
        remedy: "load nftables (or iptables) rules, e.g. `systemctl enable --now nftables`",
    },
    CheckDef {
        id: "time-sync",
        rationale: "logs, certificates and TOTP need a correct clock",
        remedy: "enable systemd-timesyncd, chrony or ntpd",
    },
];

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Pass(String),
    Fail(String),
    Unknown(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass(_) => "passes",
            Verdict::Fail(_) => "fails",
            Verdict::Unknown(_) => "is unknown",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Pass(r) | Verdict::Fail(r) | Verdict::Unknown(r) => r,
        }
    }
}

/// What the checks read besides the root.
pub struct Inputs<'a> {
    pub root: &'a Path,
    pub world_writable_paths: &'a [PathBuf],
    pub max_files: u64,
    pub secret_files: &'a [PathBuf],
}

pub fn run(id: &str, i: &Inputs<'_>) -> Verdict {
    match id {
        "ssh-root-login" => ssh(i.root, "permitrootlogin", "prohibit-password", |v| {
            matches!(
                v,
                "no" | "prohibit-password" | "without-password" | "forced-commands-only"
            )
        }),
        "ssh-password-auth" => ssh(i.root, "passwordauthentication", "yes", |v| v == "no"),
        "world-writable" => world_writable(i),
        "secret-modes" => secret_modes(i.secret_files),
        "unattended-upgrades" => unattended_upgrades(i.root),
        "firewall" => firewall(i.root),
        "time-sync" => time_sync(i.root),
        _ => Verdict::Unknown(format!("no check named `{id}`")),
    }
}

/// An sshd setting against what passes; `default` is sshd's own when
/// the files leave it unset.
fn ssh(root: &Path, key: &str, default: &str, ok: impl Fn(&str) -> bool) -> Verdict {
    let settings = match sshd::effective(root) {
        Ok(Some(s)) => s,
        Ok(None) => return Verdict::Unknown("no /etc/ssh/sshd_config (is sshd installed?)".into()),
        Err(e) => return Verdict::Unknown(e),
    };
    let name = match key {
        "permitrootlogin" => "PermitRootLogin",
        _ => "PasswordAuthentication",
    };
    let (value, whence) = match settings.get(key) {
        Some(v) => (v.to_ascii_lowercase(), ""),
        None => (default.to_string(), " (sshd's default)"),
    };
    let text = format!("{name} is {value}{whence}");
    if ok(&value) {
        Verdict::Pass(text)
    } else {
        Verdict::Fail(text)
    }
}

fn world_writable(i: &Inputs<'_>) -> Verdict {
    let mut found = Vec::new();
    let mut seen = 0u64;
    let mut stack: Vec<PathBuf> = i
        .world_writable_paths
        .iter()
        .map(|p| i.root.join(p.strip_prefix("/").unwrap_or(p)))
        .collect();
    let mut unreadable = Vec::new();
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > i.max_files {
            return Verdict::Unknown(format!(
                "more than {} entries under {}: raise max_files or narrow world_writable_paths",
                i.max_files,
                list(
                    i.world_writable_paths
                        .iter()
                        .map(|p| p.display().to_string())
                )
            ));
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = m.permissions().mode();
        let sticky = mode & 0o1000 != 0;
        if m.is_file() && mode & 0o002 != 0 || m.is_dir() && mode & 0o002 != 0 && !sticky {
            found.push(sshd::show(i.root, &p));
        }
        if m.is_dir() {
            match std::fs::read_dir(&p) {
                Ok(d) => stack.extend(d.filter_map(Result::ok).map(|e| e.path())),
                Err(e) => unreadable.push(format!("{}: {e}", sshd::show(i.root, &p))),
            }
        }
    }
    found.sort();
    if !found.is_empty() {
        Verdict::Fail(format!("world-writable: {}", list(found)))
    } else if !unreadable.is_empty() {
        Verdict::Unknown(format!("cannot read {}", list(unreadable)))
    } else {
        Verdict::Pass(format!("none among {seen} entries"))
    }
}

fn secret_modes(files: &[PathBuf]) -> Verdict {
    if files.is_empty() {
        return Verdict::Pass("no password or token files configured".into());
    }
    let mut loose = Vec::new();
    let mut unknown = Vec::new();
    for f in files {
        match std::fs::metadata(f) {
            Ok(m) if m.permissions().mode() & 0o027 != 0 => loose.push(format!(
                "{} is {:04o}",
                f.display(),
                m.permissions().mode() & 0o7777
            )),
            Ok(_) => {}
            Err(e) => unknown.push(format!("{}: {e}", f.display())),
        }
    }
    if !loose.is_empty() {
        Verdict::Fail(list(loose))
    } else if !unknown.is_empty() {
        Verdict::Unknown(format!("cannot stat {}", list(unknown)))
    } else {
        Verdict::Pass(format!("{} file(s) 0640 or stricter", files.len()))
    }
}

fn unattended_upgrades(root: &Path) -> Verdict {
    if !root.join("etc/debian_version").exists() {
        return Verdict::Unknown("not a Debian host".into());
    }
    let installed = ["usr/bin/unattended-upgrade", "usr/bin/unattended-upgrades"]
        .iter()
        .any(|p| root.join(p).exists());
    if !installed {
        return Verdict::Fail("the unattended-upgrades package is not installed".into());
    }
    let dir = root.join("etc/apt/apt.conf.d");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => return Verdict::Unknown(format!("cannot read /etc/apt/apt.conf.d: {e}")),
    };
    files.sort();
    // apt reads the files in order; the last setting wins.
    let mut enabled = None;
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            if let Some(rest) = line.strip_prefix("APT::Periodic::Unattended-Upgrade") {
                let v = rest.trim().trim_end_matches(';').trim().trim_matches('"');
                enabled = Some((v != "0" && !v.is_empty(), sshd::show(root, &f)));
            }
        }
    }
    match enabled {
        Some((true, f)) => Verdict::Pass(format!("APT::Periodic::Unattended-Upgrade is on ({f})")),
        Some((false, f)) => Verdict::Fail(format!("APT::Periodic::Unattended-Upgrade is 0 ({f})")),
        None => Verdict::Fail("APT::Periodic::Unattended-Upgrade is not set".into()),
    }
}

fn firewall(root: &Path) -> Verdict {
    let find = |name: &str| {
        ["usr/sbin", "sbin", "usr/bin"]
            .iter()
            .map(|d| root.join(d).join(name))
            .find(|p| p.is_file())
    };
    let ask = |prog: PathBuf, args: &[&str]| {
        Command::new(&prog)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| format!("{}: {e}", prog.display()))
    };
    if let Some(nft) = find("nft") {
        return match ask(nft, &["-s", "list", "ruleset"]) {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let hooks = text.lines().filter(|l| l.contains(" hook ")).count();
                if hooks > 0 {
                    Verdict::Pass(format!("nftables: {hooks} base chain(s) loaded"))
                } else {
                    Verdict::Fail("nftables has no rules loaded".into())
                }
            }
            Ok(o) => Verdict::Unknown(format!(
                "cannot read nftables rules: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Verdict::Unknown(e),
        };
    }
    if let Some(ipt) = find("iptables") {
        return match ask(ipt, &["-S"]) {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let rules = text.lines().filter(|l| l.starts_with("-A ")).count();
                let dropping = text
                    .lines()
                    .any(|l| l.starts_with("-P INPUT") && !l.ends_with("ACCEPT"));
                if rules > 0 || dropping {
                    Verdict::Pass(format!("iptables: {rules} rule(s)"))
                } else {
                    Verdict::Fail("iptables has no rules and accepts everything".into())
                }
            }
            Ok(o) => Verdict::Unknown(format!(
                "cannot read iptables rules: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Verdict::Unknown(e),
        };
    }
    // No tool to read rules with: the kernel's own list of loaded
    // iptables tables still tells "nothing loaded" from "cannot tell".
    match std::fs::read_to_string(root.join("proc/net/ip_tables_names")) {
        Ok(t) if t.trim().is_empty() => Verdict::Fail(
            "no firewall rules: neither nft nor iptables is installed and no iptables table is loaded"
                .into(),
        ),
        Ok(t) => Verdict::Unknown(format!(
            "iptables tables loaded ({}) but neither nft nor iptables is installed to read their rules",
            t.split_whitespace().collect::<Vec<_>>().join(", ")
        )),
        Err(_) => Verdict::Unknown("neither nft nor iptables is installed, and /proc/net/ip_tables_names cannot be read".into()),
    }
}

/// A time daemon among the running processes (read from `/proc`, as the
/// worker probe finds processes).
fn time_sync(root: &Path) -> Verdict {
    const DAEMONS: &[&str] = &["systemd-timesyn", "chronyd", "ntpd", "openntpd"];
    let proc_dir = root.join("proc");
    let Ok(d) = std::fs::read_dir(&proc_dir) else {
        return Verdict::Unknown(format!("cannot read {}", sshd::show(root, &proc_dir)));
    };
    for e in d.filter_map(Result::ok) {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm"))
            && DAEMONS.contains(&comm.trim())
        {
            return Verdict::Pass(format!("{} is running", comm.trim()));
        }
    }
    Verdict::Fail("none of systemd-timesyncd, chronyd or ntpd is running".into())
}

/// At most five items, then how many more.
fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(" and {} more", items.len() - 5));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(root: &'a Path, paths: &'a [PathBuf], secrets: &'a [PathBuf]) -> Inputs<'a> {
        Inputs {
            root,
            world_writable_paths: paths,
            max_files: 1000,
            secret_files: secrets,
        }
    }

    #[test]
    fn ssh_settings_and_defaults() {
        let root = tempfile::tempdir().unwrap();
        let i = inputs(root.path(), &[], &[]);
        assert!(matches!(run("ssh-root-login", &i), Verdict::Unknown(_)));
        std::fs::create_dir_all(root.path().join("etc/ssh")).unwrap();
        std::fs::write(
            root.path().join("etc/ssh/sshd_config"),
            "PermitRootLogin yes\n",
        )
        .unwrap();
        assert_eq!(
            run("ssh-root-login", &i),
            Verdict::Fail("PermitRootLogin is yes".into())
        );
        assert_eq!(
            run("ssh-password-auth", &i),
            Verdict::Fail("PasswordAuthentication is yes (sshd's default)".into())
        );
        std::fs::write(
            root.path().join("etc/ssh/sshd_config"),
            "PasswordAuthentication no\n",
        )
        .unwrap();
        assert_eq!(
            run("ssh-root-login", &i),
            Verdict::Pass("PermitRootLogin is prohibit-password (sshd's default)".into())
        );
        assert!(matches!(run("ssh-password-auth", &i), Verdict::Pass(_)));
    }

    #[test]
    fn world_writable_files_and_sticky_dirs() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(etc.join("shared")).unwrap();
        std::fs::write(etc.join("ok"), "").unwrap();
        std::fs::write(etc.join("open"), "").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&etc.join("open"), 0o666);
        set(&etc.join("shared"), 0o1777);
        let paths = [PathBuf::from("/etc")];
        let i = inputs(root.path(), &paths, &[]);
        assert_eq!(
            run("world-writable", &i),
            Verdict::Fail("world-writable: /etc/open".into())
        );
        set(&etc.join("open"), 0o644);
        assert!(matches!(run("world-writable", &i), Verdict::Pass(_)));
        let tight = Inputs { max_files: 2, ..i };
        assert!(
            matches!(run("world-writable", &tight), Verdict::Unknown(r) if r.starts_with("more than 2 entries"))
        );
    }

    #[test]
    fn secret_modes_0640_or_stricter() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "t").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let files = [f.clone()];
        let i = inputs(dir.path(), &[], &files);
        assert!(matches!(run("secret-modes", &i), Verdict::Pass(_)));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            run("secret-modes", &i),
            Verdict::Fail(format!("{} is 0644", f.display()))
        );
    }

    #[test]
    fn unattended_upgrades_on_debian_only() {
        let root = tempfile::tempdir().unwrap();
        let i = inputs(root.path(), &[], &[]);
        assert_eq!(
            run("unattended-upgrades", &i),
            Verdict::Unknown("not a Debian host".into())
        );
        std::fs::create_dir_all(root.path().join("etc/apt/apt.conf.d")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::write(root.path().join("etc/debian_version"), "12.8\n").unwrap();
        assert!(
            matches!(run("unattended-upgrades", &i), Verdict::Fail(r) if r.contains("not installed"))
        );
        std::fs::write(root.path().join("usr/bin/unattended-upgrade"), "").unwrap();
        std::fs::write(
            root.path().join("etc/apt/apt.conf.d/20auto-upgrades"),
            "APT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"1\";\n",
        )
        .unwrap();
        assert!(matches!(run("unattended-upgrades", &i), Verdict::Pass(_)));
        std::fs::write(
            root.path().join("etc/apt/apt.conf.d/99off"),
            "APT::Periodic::Unattended-Upgrade \"0\";\n",
        )
        .unwrap();
        assert!(matches!(run("unattended-upgrades", &i), Verdict::Fail(_)));
    }

    #[test]
    fn firewall_without_tools_reads_the_kernels_tables() {
        let root = tempfile::tempdir().unwrap();
        let i = inputs(root.path(), &[], &[]);
        assert!(matches!(run("firewall", &i), Verdict::Unknown(_)));
        std::fs::create_dir_all(root.path().join("proc/net")).unwrap();
        std::fs::write(root.path().join("proc/net/ip_tables_names"), "").unwrap();
        assert!(
            matches!(run("firewall", &i), Verdict::Fail(r) if r.starts_with("no firewall rules"))
        );
        std::fs::write(
            root.path().join("proc/net/ip_tables_names"),
            "filter\nnat\n",
        )
        .unwrap();
        assert!(
            matches!(run("firewall", &i), Verdict::Unknown(r) if r.starts_with("iptables tables loaded (filter, nat)"))
        );
    }

    #[test]
    fn time_sync_finds_a_daemon_in_proc() {
        let root = tempfile::tempdir().unwrap();
        let i = inputs(root.path(), &[], &[]);
        assert!(matches!(run("time-sync", &i), Verdict::Unknown(_)));
        std::fs::create_dir_all(root.path().join("proc/42")).unwrap();
        std::fs::write(root.path().join("proc/42/comm"), "bash\n").unwrap();
        assert!(matches!(run("time-sync", &i), Verdict::Fail(_)));
        std::fs::create_dir_all(root.path().join("proc/43")).unwrap();
        std::fs::write(root.path().join("proc/43/comm"), "chronyd\n").unwrap();
        assert_eq!(
            run("time-sync", &i),
            Verdict::Pass("chronyd is running".into())
        );
    }
}
