//! `authorized_keys` lines: options, key type, key and comment, each key
//! known by its SHA256 fingerprint (as `ssh-keygen -l` prints it), never
//! by the key itself. Garbage lines are counted, not fatal.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One key of an `authorized_keys` file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// `SHA256:` and the unpadded base64 of the key blob's digest.
    pub fingerprint: String,
    /// `ed25519`, `rsa`, `ecdsa`, `ed25519-sk`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub comment: String,
    /// Whether the line restricts the key (`command="..."`, `from=...`).
    pub options: bool,
}

/// The keys of one file and the lines that were not keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub keys: Vec<Key>,
    pub invalid_lines: usize,
}

/// Every key line of `text`; blank lines and comments are skipped, a line
/// that is not a key is counted in `invalid_lines`.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(k) => out.keys.push(k),
            None => out.invalid_lines += 1,
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Key> {
    let (options, rest) = match line.split_whitespace().next() {
        Some(first) if short_type(first).is_some() => (false, line),
        _ => (true, skip_options(line)?),
    };
    let mut parts = rest.trim_start().splitn(3, char::is_whitespace);
    let kind = parts.next()?;
    let blob = parts.next()?;
    let comment = parts.next().unwrap_or("").trim();
    let short = short_type(kind)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    // The blob starts with its own type name: a key pasted under another
    // type's name is garbage, as sshd would find.
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if bytes.get(4..4 + len)? != kind.as_bytes() {
        return None;
    }
    let digest = Sha256::digest(&bytes);
    Some(Key {
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ),
        kind: short.to_string(),
        comment: comment.to_string(),
        options,
    })
}

/// The rest of the line after its options: a comma-separated list whose
/// values may be quoted and hold spaces (`command="echo hi",no-pty`).
fn skip_options(line: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Some(&line[i..]),
            _ => {}
        }
    }
    None
}

/// The short name of a key type sshd accepts.
fn short_type(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" => "rsa",
        "ssh-dss" => "dsa",
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => "ecdsa",
        "sk-ssh-ed25519@openssh.com" => "ed25519-sk",
        "sk-ecdsa-sha2-nistp256@openssh.com" => "ecdsa-sk",
        "ssh-ed25519-cert-v01@openssh.com" => "ed25519-cert",
        "ssh-rsa-cert-v01@openssh.com" => "rsa-cert",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com" => "ecdsa-cert",
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A made-up ed25519 public key line (`blob` is the wire encoding of a
    /// key whose 32 bytes are `seed` repeated).
    pub fn ed25519_line(seed: u8, comment: &str) -> String {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[seed; 32]);
        format!(
            "ssh-ed25519 {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn fingerprints_as_ssh_keygen_prints_them() {
        // `ssh-keygen -lf` of this line prints
        // 256 SHA256:8W6DXHLePE4WO7hq3P1VyFccEngRxfKkG8eJ7HOCtAU alice@laptop (ED25519)
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoK alice@laptop";
        let p = parse(line);
        assert_eq!(p.invalid_lines, 0);
        assert_eq!(p.keys[0].kind, "ed25519");
        assert_eq!(p.keys[0].comment, "alice@laptop");
        assert_eq!(
            p.keys[0].fingerprint,
            "SHA256:8W6DXHLePE4WO7hq3P1VyFccEngRxfKkG8eJ7HOCtAU"
        );
        assert_eq!(ed25519_line(10, "alice@laptop"), line);
    }

    #[test]
    fn options_garbage_and_comments() {
        let text = format!(
            "# a comment\n\ncommand=\"echo a b\",no-pty {}\nfrom=\"10.0.0.0/8\" {}\nnot a key\nssh-ed25519 !!!notbase64 x\nssh-rsa {}\n",
            ed25519_line(1, "deploy@ci"),
            ed25519_line(2, ""),
            // An ed25519 blob under the rsa name.
            ed25519_line(3, "").split(' ').nth(1).unwrap()
        );
        let p = parse(&text);
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.invalid_lines, 3);
        assert!(p.keys[0].options);
        assert_eq!(p.keys[0].comment, "deploy@ci");
        assert_eq!(p.keys[1].comment, "");
        assert_ne!(p.keys[0].fingerprint, p.keys[1].fingerprint);
    }
}
