//! Access-log parsing speed: combined-format lines per second on one core,
//! through the same parser and counters the probe uses.
//! Run: `cargo bench --bench access_log`.

use std::time::Instant;

use upkeep::probes::access_log::parse::{TimeUnit, combined};

fn main() {
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "curl/8.5.0",
        "Prometheus/2.48.0",
    ];
    let mut text = Vec::new();
    const LINES: usize = 1_000_000;
    for i in 0..LINES {
        let status = [200, 200, 200, 201, 204, 301, 404, 500][i % 8];
        let line = format!(
            "203.0.113.{} - - [28/Nov/2026:10:{:02}:{:02} +0000] \"GET /api/v1/orders/{}?page={} HTTP/1.1\" {} {} \"https://example.com/app\" \"{}\" {:.3}\n",
            i % 254,
            (i / 60) % 60,
            i % 60,
            i * 7919 % 100_000,
            i % 13,
            status,
            200 + i % 5000,
            agents[i % agents.len()],
            (i % 997) as f64 / 1000.0
        );
        text.extend_from_slice(line.as_bytes());
    }
    let mb = text.len() as f64 / 1e6;
    let mut rates = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let (mut ok, mut sum) = (0u64, 0f64);
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(l) = combined(line, TimeUnit::S) {
                ok += 1;
                sum += l.seconds.unwrap_or(0.0) + l.status as f64;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(ok as usize, LINES, "every generated line parses");
        std::hint::black_box(sum);
        rates.push(LINES as f64 / secs);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = rates[rates.len() / 2];
    println!(
        "access_log combined parse: median {:.0} lines/s ({:.0} MB/s) over 7 runs of {LINES} lines ({mb:.0} MB); min {:.0}, max {:.0}; target 1,000,000 lines/s: {:.1}x",
        median,
        median * (mb / LINES as f64),
        rates[0],
        rates[rates.len() - 1],
        median / 1e6
    );
}
