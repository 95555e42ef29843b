//! The most requested GET paths of an access log over a window, counted in
//! a capped map: at most `2 × cap` paths are held; past that the map keeps
//! its `cap` most counted paths (a path seen rarely may be dropped and its
//! count start again: the counts are a lower bound, exact for paths that
//! stay among the most requested). Used by the `cache_warmup` task's
//! `from_access_log` over the probe's files when the warm-up plans, not
//! kept by the running probe: the files cover the whole window whatever
//! the agent's uptime, and the map lives only for the plan. The pure line
//! reader `get_path` is tested here.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// GET requests per path, bounded.
#[derive(Debug, Default)]
pub struct TopPaths {
    cap: usize,
    counts: HashMap<String, u64>,
}

impl TopPaths {
    pub fn new(cap: usize) -> TopPaths {
        TopPaths {
            cap: cap.max(1),
            counts: HashMap::new(),
        }
    }

    pub fn add(&mut self, path: &str) {
        if let Some(n) = self.counts.get_mut(path) {
            *n += 1;
            return;
        }
        if self.counts.len() >= 2 * self.cap {
            let keep = self.top(self.cap);
            self.counts = keep.into_iter().collect();
        }
        self.counts.insert(path.to_string(), 1);
    }

    /// The `n` most counted paths, most first (ties by path).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.counts.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Counts the GET requests of a combined-format log file at `since_ms`
    /// or later; a missing file counts nothing.
    pub fn add_file(&mut self, path: &Path, since_ms: i64) -> std::io::Result<()> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut r = std::io::BufReader::with_capacity(1 << 16, f);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if let Some((ts, p)) = get_path(&line)
                && ts >= since_ms
            {
                self.add(p);
            }
        }
    }
}

/// The time (unix ms) and target of a GET line in combined (or common)
/// format: `HOST - USER [10/Oct/2000:13:55:36 -0700] "GET /a?b HTTP/1.1" …`.
/// `None` for another method or a line that does not read.
pub fn get_path(line: &[u8]) -> Option<(i64, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let ts = chrono::DateTime::parse_from_str(&line[open + 1..close], "%d/%b/%Y:%H:%M:%S %z")
        .ok()?
        .timestamp_millis();
    let q1 = close + line[close..].find('"')?;
    let q2 = q1 + 1 + line[q1 + 1..].find('"')?;
    let mut req = line[q1 + 1..q2].split(' ');
    if req.next()? != "GET" {
        return None;
    }
    let target = req.next()?;
    target.starts_with('/').then_some((ts, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_lines_give_their_time_and_path_and_others_nothing() {
        let l = br#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /products?page=2 HTTP/1.1" 200 2326 "-" "curl""#;
        assert_eq!(get_path(l), Some((971211336000, "/products?page=2")));
        let post = br#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "POST /login HTTP/1.1" 200 2"#;
        assert_eq!(get_path(post), None);
        assert_eq!(get_path(b"garbage"), None);
        assert_eq!(
            get_path(br#"h - - [10/Oct/2000:13:55:36 -0700] "GET http://x/ HTTP/1.1" 200 1"#),
            None
        );
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_most_requested() {
        let mut t = TopPaths::new(3);
        for _ in 0..50 {
            t.add("/hot");
        }
        for _ in 0..20 {
            t.add("/warm");
        }
        for i in 0..10_000 {
            t.add(&format!("/once/{i}"));
            assert!(t.counts.len() <= 6);
        }
        let top = t.top(2);
        assert_eq!(
            top,
            vec![("/hot".to_string(), 50), ("/warm".to_string(), 20)]
        );
    }
}
