//! Registry credentials and the distribution auth challenge.
//!
//! Credentials (user and password) come from the first of these files that
//! has an entry for the registry, the order podman and skopeo use:
//!
//! 1. `--authfile PATH` (a [`super::RegistryOptions`] field), else
//!    `$REGISTRY_AUTH_FILE`;
//! 2. `${XDG_RUNTIME_DIR}/containers/auth.json`;
//! 3. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! Each is JSON `{"auths": {"<key>": {"auth": "<base64 of user:password>"}}}`.
//! A key is the registry host (`127.0.0.1:5000`), optionally with a
//! repository prefix (`host/ns`, the most specific match wins, as
//! containers-auth.json(5) says) or a scheme (`https://host`, as `docker
//! login` wrote it for years). Missing files are skipped; a file that is not
//! that JSON is an error naming it, not silently skipped, because a typo
//! there otherwise shows up as a puzzling 401. Credential helpers
//! (`credHelpers`, `credsStore`) are not run.
//!
//! The challenge: a registry answers a request it wants credentials for with
//! `401` and `WWW-Authenticate: Basic realm="…"` (send the credentials on
//! every request) or `WWW-Authenticate: Bearer realm="URL",service="S",
//! scope="repository:REPO:pull"` (GET `URL?service=S&scope=…` with Basic
//! credentials if there are any, anonymously otherwise; the JSON answer has
//! `token` or `access_token`, sent as `Authorization: Bearer …`).

use std::path::{Path, PathBuf};

use base64::Engine;

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth file {path}: not a containers/docker auth file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("auth file {path}: entry {key:?}: {reason}")]
    BadEntry {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
}

/// A user name and password for one registry, with the file it came from.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub from: PathBuf,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} from {})", self.user, self.from.display())
    }
}

impl Credentials {
    /// The `Authorization` value for Basic auth.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files to search, in order (existing or not).
pub fn auth_file_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match explicit {
        Some(p) => files.push(p.to_path_buf()),
        None => {
            if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
                files.push(PathBuf::from(p));
            }
        }
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(dir).join("containers/auth.json"));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(dir).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    files
}

/// Largest auth file read: they hold a few lines per registry.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// Credentials for `host` (as named in the reference) and `repository`
/// from the first file in `files` with a matching entry.
pub fn find_credentials(
    files: &[PathBuf],
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthFileError> {
    for path in files {
        let bytes = match read_bounded(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(AuthFileError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        if let Some(c) = lookup(path, &bytes, host, repository)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_AUTH_FILE)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The entry for `host`/`repository` in one auth file's bytes.
fn lookup(
    path: &Path,
    bytes: &[u8],
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, AuthFileError> {
    let malformed = |reason: String| AuthFileError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let Some(auths) = doc.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| malformed("\"auths\" is not an object".into()))?;
    // Most specific first: host/a/b, host/a, host; then the spellings with
    // a scheme that `docker login` writes.
    let mut keys = Vec::new();
    let parts: Vec<&str> = repository.split('/').collect();
    for n in (1..=parts.len()).rev() {
        keys.push(format!("{host}/{}", parts[..n].join("/")));
    }
    keys.push(host.to_string());
    keys.push(format!("https://{host}"));
    keys.push(format!("http://{host}"));
    if host == "docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
    }
    for key in keys {
        let Some(entry) = auths.get(&key).or_else(|| auths.get(&format!("{key}/"))) else {
            continue;
        };
        let bad = |reason| AuthFileError::BadEntry {
            path: path.to_path_buf(),
            key: key.clone(),
            reason,
        };
        let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else {
            // An entry without "auth" (only an identity token) is of no use here.
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" is not base64 of user:password"))?;
        return Ok(Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            from: path.to_path_buf(),
        }));
    }
    Ok(None)
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Other(String),
}

/// Parse a `WWW-Authenticate` value: a scheme, then `key="value"` pairs
/// separated by commas (values may be quoted and hold commas, as in
/// `scope="repository:a:pull,push"`).
pub fn parse_challenge(value: &str) -> Challenge {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Challenge::Basic
    } else if scheme.eq_ignore_ascii_case("bearer") {
        match get("realm") {
            Some(realm) => Challenge::Bearer {
                realm,
                service: get("service"),
                scope: get("scope"),
            },
            None => Challenge::Other(value.to_string()),
        }
    } else {
        Challenge::Other(value.to_string())
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

/// Percent-encode a query value (RFC 3986 unreserved characters kept).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge("Basic realm=\"basic-realm\""),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:os/root:pull,push\""
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:os/root:pull,push".into()),
            }
        );
        assert!(matches!(parse_challenge("Negotiate"), Challenge::Other(_)));
    }

    #[test]
    fn auth_file_lookup() {
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let doc = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{enc}"}},"127.0.0.1:5000/other":{{"auth":"eDp5"}}}}}}"#
        );
        let p = Path::new("/x/auth.json");
        let c = lookup(p, doc.as_bytes(), "127.0.0.1:5000", "os/root")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3:cret"));
        let c = lookup(p, doc.as_bytes(), "127.0.0.1:5000", "other/x")
            .unwrap()
            .unwrap();
        assert_eq!(c.user, "x");
        assert!(lookup(p, doc.as_bytes(), "other:1", "r").unwrap().is_none());
        assert!(
            lookup(p, b"[1]", "h", "r").is_err() || lookup(p, b"[1]", "h", "r").unwrap().is_none()
        );
        assert!(lookup(p, b"nope", "h", "r").is_err());
    }

    #[test]
    fn escape() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
