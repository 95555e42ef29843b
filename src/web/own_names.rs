//! The names and addresses by which this host calls itself, for the Host
//! guard of an API listening on a wildcard address (`0.0.0.0`, `[::]`): a
//! Prometheus scraping the host as `web1:8711`, `web1.example.com:8711` or
//! `10.0.0.5:8711` names the host itself, not another site, so no DNS
//! rebinding can hide behind it. Read by [`super::Shared::host_allowed`]
//! only for a name not otherwise allowed, and read again at most once a
//! minute (addresses come and go with DHCP, VPNs, containers).

use std::ffi::{CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a list of names is used before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// This host's names and addresses, lower case, IPv6 in brackets.
#[derive(Debug, Default)]
pub struct OwnNames(Mutex<Option<(Instant, Vec<String>)>>);

impl OwnNames {
    /// Whether `name` (lower case, without port or trailing dot) is one of
    /// this host's names or addresses.
    pub fn contains(&self, name: &str) -> bool {
        let mut cached = self.0.lock().expect("own names lock");
        if cached
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= FRESH_FOR)
        {
            *cached = Some((Instant::now(), read()));
        }
        cached
            .as_ref()
            .is_some_and(|(_, names)| names.iter().any(|n| n == name))
    }
}

/// The host name, its canonical (fully qualified) name, and the address of
/// every interface.
pub fn read() -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = sysinfo::System::host_name() {
        if let Some(canonical) = canonical_name(&h) {
            out.push(canonical.to_ascii_lowercase());
        }
        out.push(h.to_ascii_lowercase());
    }
    let networks = sysinfo::Networks::new_with_refreshed_list();
    for data in networks.list().values() {
        for net in data.ip_networks() {
            out.push(match net.addr {
                std::net::IpAddr::V4(a) => a.to_string(),
                std::net::IpAddr::V6(a) => format!("[{a}]"),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The canonical name the resolver gives `host` (as `hostname -f` does);
/// `None` when it has none.
fn canonical_name(host: &str) -> Option<String> {
    let node = CString::new(host).ok()?;
    // SAFETY: a zeroed addrinfo is a valid hints value (all fields empty).
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated node, null service, valid hints and out pointer.
    let rc = unsafe { libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: getaddrinfo succeeded, so `res` points to a list it allocated;
    // the first entry carries the canonical name (or null).
    let name = unsafe {
        let first = &*res;
        let n = (!first.ai_canonname.is_null()).then(|| {
            CStr::from_ptr(first.ai_canonname)
                .to_string_lossy()
                .into_owned()
        });
        libc::freeaddrinfo(res);
        n
    };
    name.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_and_loopback_are_among_its_own_names() {
        let names = read();
        let host = sysinfo::System::host_name().unwrap().to_ascii_lowercase();
        assert!(names.contains(&host), "{names:?}");
        assert!(names.contains(&"127.0.0.1".to_string()), "{names:?}");
        let own = OwnNames::default();
        assert!(own.contains(&host));
        assert!(!own.contains("evil.example"));
    }
}
