//! The pure half of the Fedora/RHEL check: `dnf -q check-update` (exit
//! 100 when there are updates) and `dnf -q updateinfo list --security`, in
//! the formats of dnf 4 and dnf 5. Tested on outputs of real dnf runs
//! (`fixtures/`, each with its source named in `fixtures/README.md`).

use std::collections::BTreeMap;

/// The packages `dnf check-update` lists: `name.arch  version  repo`, up
/// to the "Obsoleting Packages" section (whose lines repeat packages).
pub fn parse_check_update(out: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in out.lines() {
        if line.starts_with("Obsoleting Packages") {
            break;
        }
        if line.starts_with(char::is_whitespace) || line.starts_with("Last metadata") {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let [nevra, _version, _repo] = cols.as_slice()
            && let Some((name, _arch)) = nevra.rsplit_once('.')
        {
            names.push(name.to_string());
        }
    }
    names
}

/// Security advisories by package name, each with its issue date (unix
/// seconds) when the output gives one (dnf 5 does; dnf 4 does not).
///
/// dnf 4: `[i ]FEDORA-2018-318f184113 Moderate/Sec. CQRlib-1.1.2-16.fc29.x86_64`;
/// dnf 5: a `Name Type Severity Package Issued` header, then
/// `FEDORA-… security Moderate CQRlib-1.1.2-16.fc29.x86_64 2019-01-20 00:00:00`.
pub fn parse_updateinfo(out: &str) -> BTreeMap<String, Option<i64>> {
    let mut found: BTreeMap<String, Option<i64>> = BTreeMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let cols = match cols.first() {
            Some(&"i") => &cols[1..],
            _ => &cols[..],
        };
        let (nevra, issued) = match cols {
            [_, kind, _severity, nevra, date, time] if *kind == "security" => {
                let at = chrono::NaiveDateTime::parse_from_str(
                    &format!("{date} {time}"),
                    "%Y-%m-%d %H:%M:%S",
                )
                .ok()
                .map(|d| d.and_utc().timestamp());
                (*nevra, at)
            }
            [_, severity, nevra] if severity.ends_with("/Sec.") => (*nevra, None),
            _ => continue,
        };
        let Some(name) = package_name(nevra) else {
            continue;
        };
        let entry = found.entry(name).or_insert(issued);
        // The oldest advisory still pending is the one that counts.
        if let (Some(old), Some(new)) = (*entry, issued) {
            *entry = Some(old.min(new));
        }
    }
    found
}

/// `name-[epoch:]version-release.arch` → `name`.
fn package_name(nevra: &str) -> Option<String> {
    let (rest, _arch) = nevra.rsplit_once('.')?;
    let mut parts = rest.rsplitn(3, '-');
    let _release = parts.next()?;
    let _version = parts.next()?;
    parts.next().map(str::to_string)
}

/// `needs-restarting -r`: exit 1 means a reboot is needed, 0 that none is.
pub fn reboot_needed(exit: Option<i32>) -> Option<bool> {
    match exit {
        Some(0) => Some(false),
        Some(1) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_update_lists_packages() {
        let names = parse_check_update(include_str!("fixtures/check-update.txt"));
        assert_eq!(names, vec!["libocsync0", "owncloud-client"]);
        let obsoleting = "a.x86_64 1-1 baseos\nObsoleting Packages\ngrub2-tools.x86_64 1:2.06-114 baseos\n    grub2-tools.x86_64 1:2.06-104 @baseos\n";
        assert_eq!(parse_check_update(obsoleting), vec!["a"]);
    }

    #[test]
    fn updateinfo_of_dnf4_and_dnf5() {
        let four = parse_updateinfo(include_str!("fixtures/updateinfo-dnf4.txt"));
        assert_eq!(
            four.into_iter().collect::<Vec<_>>(),
            vec![("CQRlib".to_string(), None)]
        );
        let five = parse_updateinfo(include_str!("fixtures/updateinfo-dnf5.txt"));
        assert_eq!(
            five.into_iter().collect::<Vec<_>>(),
            vec![("CQRlib".to_string(), Some(1_547_942_400))]
        );
        let rhel = parse_updateinfo(include_str!("fixtures/updateinfo-rhel7.txt"));
        let names: Vec<&str> = rhel.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "NetworkManager",
                "NetworkManager-config-server",
                "bind-libs-lite",
                "glibc",
                "grub2",
                "grub2-tools"
            ]
        );
    }

    #[test]
    fn needs_restarting_exit_codes() {
        assert_eq!(reboot_needed(Some(1)), Some(true));
        assert_eq!(reboot_needed(Some(0)), Some(false));
        assert_eq!(reboot_needed(None), None);
    }
}
