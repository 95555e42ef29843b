//! `contrib/`: the Prometheus scrape config and rules pass `promtool`, the
//! rules' unit tests pass `promtool test rules`, and every query of the
//! Grafana dashboard parses and returns data from a real Prometheus
//! scraping a real agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib")
}

/// Runs a tool `./test.sh` installs; fails the test when it is missing.
fn tool(name: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(name).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{name} is not on PATH: run the tests with ./test.sh, which installs it")
        }
        Err(e) => panic!("running {name}: {e}"),
    }
}

fn assert_ok(o: &Output, what: &str) -> String {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{what}: {}\n{said}", o.status);
    said
}

#[test]
fn the_prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    let dir = contrib().join("prometheus");
    let said = assert_ok(
        &tool("promtool", &["check", "config", "prometheus.yml"], &dir),
        "promtool check config",
    );
    assert!(said.contains("rule files found"), "{said}");
    let said = assert_ok(
        &tool(
            "promtool",
            &["check", "rules", "rules/upkeep.rules.yml"],
            &dir,
        ),
        "promtool check rules",
    );
    assert!(said.contains("SUCCESS: 12 rules found"), "{said}");
    let said = assert_ok(
        &tool(
            "promtool",
            &["test", "rules", "tests/upkeep.rules.test.yml"],
            &dir,
        ),
        "promtool test rules",
    );
    assert!(said.contains("SUCCESS"), "{said}");
    // The file service discovery example lists targets as Prometheus reads them.
    let targets = std::fs::read_to_string(dir.join("targets/example.yml")).unwrap();
    assert!(targets.contains("- targets:"), "{targets}");
}
