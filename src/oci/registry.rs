//! A registry client: OCI images and their seals over the distribution API.
//!
//! Contract: [`Registry`] implements [`ImageSource`] for one reference
//! `docker://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]` (the spelling skopeo
//! and podman use; no tag and no digest means `:latest`; a first component
//! without `.` or `:` that is not `localhost` means Docker Hub,
//! `docker.io/library/…` for a single name). It also pushes a seal beside an
//! image and finds the seals pushed beside one ([`Registry::push_seal`],
//! [`Registry::find_seals`], in [`referrers`]). Blobs stream: nothing reads
//! a layer whole into memory; manifests and seals are read with a size cap.
//!
//! Protocol facts (OCI distribution spec 1.1; Docker registry API v2):
//! - `GET /v2/<repo>/manifests/<tag|digest>` with `Accept` naming the OCI
//!   manifest and index and Docker's schema-2 manifest and list; `200`. An
//!   index is resolved to its entry for `linux/<this machine's
//!   architecture>`, fetched by digest. Every manifest's sha256 is computed
//!   here; fetched by digest, it must match.
//! - `GET /v2/<repo>/blobs/<digest>`: `200`, possibly after a redirect
//!   (followed; credentials are not sent to the redirect target).
//! - Push: `HEAD /v2/<repo>/blobs/<digest>` (`200`: already there), else
//!   `POST /v2/<repo>/blobs/uploads/` (`202` + `Location`) then
//!   `PUT <Location>&digest=<digest>` with the bytes (`201`);
//!   `PUT /v2/<repo>/manifests/<ref>` with the manifest's media type as
//!   `Content-Type` (`201`).
//! - Auth: a `401` carries `WWW-Authenticate` (Basic or Bearer; see
//!   [`auth`]); the request is answered once more with credentials.
//!   Still `401` is an error naming the registry, the repository and the
//!   status.
//! - Transport: HTTPS with the system CA bundle (`$SSL_CERT_FILE`, else the
//!   distribution's bundle file) plus every `--ca-file` PEM; plain HTTP
//!   only to a registry named in [`RegistryOptions::insecure`] as it is
//!   written in the reference (`HOST:PORT`). Connection errors, timeouts,
//!   `429` and `5xx` are retried [`RegistryOptions::retries`] times with
//!   doubling backoff from 250 ms; other statuses are not. A layer whose
//!   body stops early (the connection dropped) is requested again from the
//!   byte reached with `Range: bytes=N-` (`206` with a matching
//!   `Content-Range`, or a `200` whose first N bytes are skipped), up to the
//!   same number of times per blob.
//!
//! Why ureq and not `oci-client`: [`ImageSource`] is a blocking trait read
//! through `std::io::Read`; ureq is blocking and streams a response body as
//! a `Read`, so a layer goes from socket to the caller's hasher with no
//! runtime and no channel in between. `oci-client` 0.18 needs tokio and
//! reqwest (178 crates in its tree with rustls, among them aws-lc-sys, a C
//! and CMake build, against 30 for ureq with rustls/ring), and has neither
//! retries nor the referrers tag-schema fallback, so both would be written
//! here anyway.

pub mod auth;
pub mod referrers;

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::oci::flatten::{sha256_digest, sha256_hex};
use crate::oci::seal_artifact::SealPair;
use crate::oci::source::{ImageSource, OciDigest};
use auth::{AuthFileError, Challenge, Credentials};
pub use referrers::{FoundSeals, PushedSeal, SealDiscovery};

/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema-2 manifest (what `docker push` writes; same shape as OCI's).
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (same shape as an OCI index).
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index read (the OCI spec's floor for what registries accept).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Default retry count for connection errors, timeouts, 429 and 5xx.
pub const DEFAULT_RETRIES: u32 = 4;

/// A parsed `docker://` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`127.0.0.1:5000`, `docker.io`).
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse `docker://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]`.
    pub fn parse(input: &str) -> Result<Reference, RegistryError> {
        let bad = |reason| RegistryError::BadReference {
            input: input.to_string(),
            reason,
        };
        let rest = input
            .strip_prefix("docker://")
            .ok_or_else(|| bad("it does not start with docker://"))?;
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => {
                if sha256_hex(d).is_err() {
                    return Err(bad("the digest is not sha256 and 64 lowercase hex digits"));
                }
                (n, Some(d.to_string()))
            }
            None => (rest, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let slash = name.rfind('/');
        let (name, tag) = match name.rfind(':') {
            Some(c) if slash.is_none_or(|s| c > s) => (&name[..c], Some(name[c + 1..].to_string())),
            _ => (name, None),
        };
        let (host, repository) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), r.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        if host.is_empty() {
            return Err(bad("the registry host is empty"));
        }
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(bad(
                "the repository must be lowercase letters, digits, '.', '_', '-' in '/'-separated components",
            ));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is spoken to (Docker Hub's API has its own name).
    pub fn api_host(&self) -> &str {
        if self.host == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.host
        }
    }

    /// What goes after `/manifests/`: the digest when there is one.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// How to reach registries: trust, plain HTTP exceptions, credentials, retries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Extra PEM files of CA certificates, trusted beside the system bundle.
    pub ca_files: Vec<PathBuf>,
    /// Registries (`HOST:PORT` as written in references) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// An auth file searched before `$REGISTRY_AUTH_FILE`'s place (replaces it).
    pub auth_file: Option<PathBuf>,
    /// Retries after a connection error, timeout, 429 or 5xx.
    pub retries: u32,
    /// First backoff; doubles per retry.
    pub backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            ca_files: Vec::new(),
            insecure: Vec::new(),
            auth_file: None,
            retries: DEFAULT_RETRIES,
            backoff: Duration::from_millis(250),
        }
    }
}

/// Where a registry failure happened: registry and repository.
#[derive(Debug, Clone)]
pub struct At {
    pub registry: String,
    pub repository: String,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "registry {}, repository {}",
            self.registry, self.repository
        )
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{input:?} is not a registry reference (docker://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX]): {reason}")]
    BadReference { input: String, reason: &'static str },
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// No HTTP answer: connection refused or reset, TLS refused, timeout.
    #[error("{at}: {what}: {detail} (after {attempts} attempt(s))")]
    Transport {
        at: At,
        what: String,
        detail: String,
        attempts: u32,
    },
    /// An HTTP answer other than the one the protocol step expects.
    #[error("{at}: {what}: HTTP {status}{message}")]
    Status {
        at: At,
        what: String,
        status: u16,
        /// `": <registry's error codes and messages>"` or empty.
        message: String,
    },
    /// An answer that breaks the protocol (bad JSON, wrong digest, too large).
    #[error("{at}: {what}: {reason}")]
    Protocol {
        at: At,
        what: String,
        reason: String,
    },
}

impl RegistryError {
    /// The HTTP status, when the registry answered with an unexpected one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The state of authorisation for one registry and repository.
#[derive(Debug, Clone)]
enum Authorization {
    None,
    Basic,
    Bearer { token: String, push: bool },
}

/// One request as the retry and auth loop replays it.
struct Request<'a> {
    method: &'static str,
    url: String,
    accept: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a [u8]>,
    /// Needs push rights (Bearer scope `pull,push`).
    push: bool,
    /// `Range: bytes=N-`: resume a blob from byte N.
    from: Option<u64>,
    what: String,
}

impl<'a> Request<'a> {
    /// A request with no body, no `Accept`, pull rights.
    fn new(method: &'static str, url: String, what: String) -> Request<'a> {
        Request {
            method,
            url,
            accept: None,
            content_type: None,
            body: None,
            push: false,
            from: None,
            what,
        }
    }
}

/// A client for one reference on one registry.
pub struct Registry {
    reference: Reference,
    base: String,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    auth_files: Vec<PathBuf>,
    authorization: Mutex<Authorization>,
    options: RegistryOptions,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.reference)
    }
}

/// Candidate system CA bundles, when `$SSL_CERT_FILE` is unset (Debian and
/// Ubuntu, Fedora and RHEL, openSUSE, Alpine and Arch).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let bad = |reason: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item.map_err(|e| bad(e.to_string()))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Registry {
    /// A client for `reference` with `options`. Reads CA files and auth
    /// files now (their errors surface here); makes no request yet.
    pub fn new(reference: Reference, options: &RegistryOptions) -> Result<Registry, RegistryError> {
        let insecure = options.insecure.contains(&reference.host);
        let scheme = if insecure { "http" } else { "https" };
        let base = format!("{scheme}://{}", reference.api_host());

        let mut roots = Vec::new();
        if !insecure {
            let system = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .or_else(|| {
                    SYSTEM_BUNDLES
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.is_file())
                });
            if let Some(bundle) = system {
                roots.extend(read_pem_certs(&bundle)?);
            }
            for f in &options.ca_files {
                roots.extend(read_pem_certs(f)?);
            }
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("sealctl/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::new_with_config(config);

        let auth_files = auth::auth_file_candidates(options.auth_file.as_deref());
        let credentials =
            auth::find_credentials(&auth_files, &reference.host, &reference.repository)?;
        Ok(Registry {
            reference,
            base,
            agent,
            credentials,
            auth_files,
            authorization: Mutex::new(Authorization::None),
            options: options.clone(),
        })
    }

    /// Parse `reference` and make a client for it.
    pub fn open(reference: &str, options: &RegistryOptions) -> Result<Registry, RegistryError> {
        Registry::new(Reference::parse(reference)?, options)
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Whether credentials were found (and where).
    pub fn credentials_source(&self) -> Option<&std::path::Path> {
        self.credentials.as_ref().map(|c| c.from.as_path())
    }

    fn at(&self) -> At {
        At {
            registry: self.reference.host.clone(),
            repository: self.reference.repository.clone(),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.reference.repository)
    }

    pub(crate) fn protocol_error(
        &self,
        what: impl Into<String>,
        reason: impl Into<String>,
    ) -> RegistryError {
        RegistryError::Protocol {
            at: self.at(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A status error with the registry's own error text, if it sent one
    /// (`{"errors":[{"code","message"}]}`), and a hint for 401.
    fn status_error(
        &self,
        what: &str,
        response: ureq::http::Response<ureq::Body>,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(16 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        let mut parts = Vec::new();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
            if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
                for e in errs.iter().take(3) {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                    parts.push(format!("{code} {msg}").trim().to_string());
                }
            }
        }
        if status == 401 {
            parts.push(match &self.credentials {
                Some(c) => format!(
                    "credentials for user {:?} from {} refused",
                    c.user,
                    c.from.display()
                ),
                None => format!(
                    "no credentials for {} in {}",
                    self.reference.host,
                    self.auth_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let message = if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join("; "))
        };
        RegistryError::Status {
            at: self.at(),
            what: what.to_string(),
            status,
            message,
        }
    }

    /// Send `req`, retrying transport failures, 429 and 5xx with backoff,
    /// and answering one auth challenge. Returns whatever status came last.
    fn send(&self, req: &Request<'_>) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let auth = self.authorization_header(req.push);
        let resp = self.send_retrying(req, auth.as_deref())?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(auth::parse_challenge);
        match challenge {
            Some(c) if self.answer_challenge(&c, req.push)? => {
                let auth = self.authorization_header(req.push);
                self.send_retrying(req, auth.as_deref())
            }
            _ => Ok(resp),
        }
    }

    /// Send `req` with a fixed `Authorization`, retrying transport
    /// failures (not TLS refusals), 429 and 5xx with backoff.
    fn send_retrying(
        &self,
        req: &Request<'_>,
        authorization: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let more = attempt <= self.options.retries;
            match self.send_once(req, authorization) {
                Ok(r) if more && (r.status().as_u16() == 429 || r.status().as_u16() >= 500) => {}
                Ok(r) => return Ok(r),
                Err(e) if more && is_retryable(&e) => {}
                Err(e) => {
                    return Err(RegistryError::Transport {
                        at: self.at(),
                        what: req.what.clone(),
                        detail: self.transport_detail(&e),
                        attempts: attempt,
                    })
                }
            }
            self.backoff(attempt);
        }
    }

    fn backoff(&self, attempt: u32) {
        let factor = 1u32 << (attempt - 1).min(6);
        std::thread::sleep(self.options.backoff * factor);
    }

    fn transport_detail(&self, e: &ureq::Error) -> String {
        let text = e.to_string();
        match e {
            e if is_tls_failure(e) => {
                // A plain-HTTP server answering a TLS hello looks like a corrupt record.
                let hint = if text.contains("corrupt") || text.contains("InvalidContentType") {
                    format!(
                        " (does {} speak plain HTTP? only registries named with --insecure-registry are spoken to without TLS)",
                        self.reference.host
                    )
                } else if text.contains("UnknownIssuer") {
                    " (the certificate's issuer is not in the system CA bundle nor any --ca-file)"
                        .to_string()
                } else {
                    String::new()
                };
                format!("TLS with {} refused: {text}{hint}", self.reference.host)
            }
            _ => text,
        }
    }

    fn authorization_header(&self, push: bool) -> Option<String> {
        let state = self.authorization.lock().ok()?.clone();
        match state {
            Authorization::None => None,
            Authorization::Basic => self.credentials.as_ref().map(|c| c.basic_header()),
            Authorization::Bearer {
                token,
                push: has_push,
            } => {
                // A pull-only token is not sent for a push: the registry would
                // answer 401 and we fetch the wider one then anyway.
                if push && !has_push {
                    None
                } else {
                    Some(format!("Bearer {token}"))
                }
            }
        }
    }

    /// Act on a challenge; `Ok(true)` when the request should be sent again.
    fn answer_challenge(&self, challenge: &Challenge, push: bool) -> Result<bool, RegistryError> {
        match challenge {
            Challenge::Basic => {
                if self.credentials.is_none() {
                    return Ok(false);
                }
                if let Ok(mut s) = self.authorization.lock() {
                    *s = Authorization::Basic;
                }
                Ok(true)
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let actions = if push { "pull,push" } else { "pull" };
                let wanted = format!("repository:{}:{actions}", self.reference.repository);
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(s) = service {
                    url.push_str(&format!("{sep}service={}", auth::query_escape(s)));
                    sep = '&';
                }
                // The registry's own scope first (it names what it checks),
                // ours too when it differs (a push needs both actions).
                let mut scopes = Vec::new();
                if let Some(s) = scope {
                    scopes.push(s.clone());
                }
                if scope.as_deref() != Some(wanted.as_str()) {
                    scopes.push(wanted);
                }
                for s in scopes {
                    url.push_str(&format!("{sep}scope={}", auth::query_escape(&s)));
                    sep = '&';
                }
                let token = self.fetch_token(&url)?;
                if let Ok(mut s) = self.authorization.lock() {
                    *s = Authorization::Bearer { token, push };
                }
                Ok(true)
            }
            Challenge::Other(_) => Ok(false),
        }
    }

    fn fetch_token(&self, url: &str) -> Result<String, RegistryError> {
        let what = format!("token from {}", url.split('?').next().unwrap_or(url));
        let req = Request {
            accept: Some("application/json"),
            ..Request::new("GET", url.to_string(), what.clone())
        };
        let basic = self.credentials.as_ref().map(|c| c.basic_header());
        let resp = self.send_retrying(&req, basic.as_deref())?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(&what, resp));
        }
        let bytes = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.protocol_error(&what, e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol_error(&what, format!("not JSON: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| self.protocol_error(&what, "no \"token\" in the answer"))
    }

    fn send_once(
        &self,
        req: &Request<'_>,
        authorization: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        macro_rules! headers {
            ($b:expr) => {{
                let mut b = $b;
                if let Some(a) = req.accept {
                    b = b.header("Accept", a);
                }
                if let Some(c) = req.content_type {
                    b = b.header("Content-Type", c);
                }
                if let Some(a) = authorization {
                    b = b.header("Authorization", a);
                }
                if let Some(n) = req.from {
                    b = b.header("Range", format!("bytes={n}-"));
                }
                b
            }};
        }
        match req.method {
            "GET" => headers!(self.agent.get(&req.url)).call(),
            "HEAD" => headers!(self.agent.head(&req.url)).call(),
            "PUT" => headers!(self.agent.put(&req.url)).send(req.body.unwrap_or_default()),
            _ => headers!(self.agent.post(&req.url)).send(req.body.unwrap_or_default()),
        }
    }

    /// Read a small body with a cap; larger is a protocol error.
    fn read_capped(
        &self,
        what: &str,
        response: ureq::http::Response<ureq::Body>,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        response
            .into_body()
            .with_config()
            .limit(cap)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    self.protocol_error(what, format!("larger than {cap} bytes"))
                }
                e => RegistryError::Transport {
                    at: self.at(),
                    what: what.to_string(),
                    detail: self.transport_detail(&e),
                    attempts: 1,
                },
            })
    }

    /// GET one manifest or index by tag or digest: bytes, media type, digest.
    pub fn get_manifest(&self, reference: &str) -> Result<Option<FetchedManifest>, RegistryError> {
        let what = format!("manifest {reference}");
        let accept = [
            MEDIA_OCI_MANIFEST,
            MEDIA_OCI_INDEX,
            MEDIA_DOCKER_MANIFEST,
            MEDIA_DOCKER_LIST,
        ]
        .join(", ");
        let resp = self.send(&Request {
            accept: Some(&accept),
            ..Request::new(
                "GET",
                self.url(&format!("manifests/{reference}")),
                what.clone(),
            )
        })?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.status_error(&what, resp)),
        }
        let header_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = self.read_capped(&what, resp, MAX_MANIFEST_SIZE)?;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(self.protocol_error(
                &what,
                format!("the registry sent bytes whose digest is {digest}"),
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol_error(&what, format!("not JSON: {e}")))?;
        let media_type = json
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .or(header_type)
            .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
            json,
        }))
    }

    /// The image manifest the reference names, an index resolved for
    /// `linux/<this architecture>`.
    pub fn resolve(&self) -> Result<FetchedManifest, RegistryError> {
        let r = self.reference.manifest_ref().to_string();
        let m = self
            .get_manifest(&r)?
            .ok_or_else(|| self.not_found(&format!("manifest {r}")))?;
        if m.media_type != MEDIA_OCI_INDEX && m.media_type != MEDIA_DOCKER_LIST {
            return Ok(m);
        }
        let arch = oci_architecture();
        let entry = m
            .json
            .get("manifests")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
            .find(|d| {
                let p = d.get("platform");
                let os = p.and_then(|p| p.get("os")).and_then(|v| v.as_str());
                let a = p
                    .and_then(|p| p.get("architecture"))
                    .and_then(|v| v.as_str());
                os == Some("linux") && a == Some(arch)
            })
            .and_then(|d| d.get("digest"))
            .and_then(|d| d.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                self.protocol_error(
                    format!("index {}", m.digest),
                    format!("no linux/{arch} manifest in it"),
                )
            })?;
        let inner = self
            .get_manifest(&entry)?
            .ok_or_else(|| self.not_found(&format!("manifest {entry}")))?;
        if inner.media_type == MEDIA_OCI_INDEX || inner.media_type == MEDIA_DOCKER_LIST {
            return Err(
                self.protocol_error(format!("manifest {entry}"), "an index inside an index")
            );
        }
        Ok(inner)
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> RegistryError {
        RegistryError::Transport {
            at: self.at(),
            what: what.to_string(),
            detail: e.to_string(),
            attempts: 1,
        }
    }

    fn not_found(&self, what: &str) -> RegistryError {
        RegistryError::Status {
            at: self.at(),
            what: what.to_string(),
            status: 404,
            message: ": not found".into(),
        }
    }

    /// `HEAD` a blob: is it in the repository?
    fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let what = format!("blob {digest}");
        let resp = self.send(&Request {
            push: true,
            ..Request::new("HEAD", self.url(&format!("blobs/{digest}")), what.clone())
        })?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&what, resp)),
        }
    }

    /// Upload a small blob (monolithic: POST for a session, PUT the bytes).
    pub fn push_blob(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        if self.blob_exists(&digest)? {
            return Ok(digest);
        }
        let what = format!("upload of blob {digest}");
        let resp = self.send(&Request {
            body: Some(&[]),
            push: true,
            ..Request::new("POST", self.url("blobs/uploads/"), what.clone())
        })?;
        if resp.status().as_u16() != 202 {
            return Err(self.status_error(&what, resp));
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol_error(&what, "202 without Location"))?
            .to_string();
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", auth::query_escape(&digest)));
        let resp = self.send(&Request {
            content_type: Some("application/octet-stream"),
            body: Some(bytes),
            push: true,
            ..Request::new("PUT", url, what.clone())
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(&what, resp));
        }
        Ok(digest)
    }

    /// PUT a manifest under `reference` (a tag or its digest). Returns the
    /// response headers' `OCI-Subject`, if the registry sent one.
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("push of manifest {reference}");
        let resp = self.send(&Request {
            content_type: Some(media_type),
            body: Some(bytes),
            push: true,
            ..Request::new(
                "PUT",
                self.url(&format!("manifests/{reference}")),
                what.clone(),
            )
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(&what, resp));
        }
        Ok(resp
            .headers()
            .get("oci-subject")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Open a blob for streaming from byte `from`; `cap` bytes at most
    /// are readable (one past the descriptor's size, so a longer blob is
    /// seen as longer). A registry that ignores `Range` (200, not 206) has
    /// the first `from` bytes read and dropped.
    fn get_blob(
        &self,
        digest: &str,
        from: u64,
        cap: u64,
    ) -> Result<Box<dyn Read + Send + 'static>, RegistryError> {
        let what = format!("blob {digest}");
        let resp = self.send(&Request {
            from: (from > 0).then_some(from),
            ..Request::new("GET", self.url(&format!("blobs/{digest}")), what.clone())
        })?;
        let body = match resp.status().as_u16() {
            200 => {
                let mut r = resp.into_body().into_reader();
                let skipped = std::io::copy(&mut (&mut r).take(from), &mut std::io::sink())
                    .map_err(|e| self.io_error(&what, e))?;
                if skipped != from {
                    return Err(self.protocol_error(
                        &what,
                        format!("ended at byte {skipped} of {from} on a resume"),
                    ));
                }
                Box::new(r) as Box<dyn Read + Send>
            }
            206 if from > 0 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {from}-")) {
                    return Err(self.protocol_error(
                        &what,
                        format!("asked for bytes {from}- and got Content-Range {range:?}"),
                    ));
                }
                Box::new(resp.into_body().into_reader())
            }
            _ => return Err(self.status_error(&what, resp)),
        };
        Ok(Box::new(body.take(cap.saturating_sub(from))))
    }

    /// Read a whole small blob (a seal) and check its digest.
    pub(crate) fn get_small_blob(
        &self,
        digest: &str,
        size: u64,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {digest}");
        if size > cap {
            return Err(self.protocol_error(
                &what,
                format!("descriptor size {size} above the limit {cap}"),
            ));
        }
        let mut out = Vec::new();
        self.get_blob(digest, 0, size + 1)?
            .read_to_end(&mut out)
            .map_err(|e| RegistryError::Transport {
                at: self.at(),
                what: what.clone(),
                detail: e.to_string(),
                attempts: 1,
            })?;
        if out.len() as u64 != size {
            return Err(self.protocol_error(
                &what,
                format!("{} bytes, the descriptor says {size}", out.len()),
            ));
        }
        let actual = sha256_digest(&out);
        if actual != digest {
            return Err(self.protocol_error(&what, format!("the bytes' digest is {actual}")));
        }
        Ok(out)
    }
}

/// What rustls says when a handshake fails, as ureq passes it on (often
/// inside an `Io` error): a plain-HTTP peer, an unknown issuer, a name
/// mismatch. Such a failure is final, never retried.
fn is_tls_failure(e: &ureq::Error) -> bool {
    if matches!(e, ureq::Error::Rustls(_) | ureq::Error::Tls(_)) {
        return true;
    }
    let text = e.to_string();
    [
        "corrupt message",
        "invalid peer certificate",
        "InvalidContentType",
        "HandshakeFailure",
        "AlertReceived",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Connection errors and timeouts are worth another try; TLS refusals not.
fn is_retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
    ) && !is_tls_failure(e)
}

/// A layer stream that survives a dropped connection: when the body ends
/// before the descriptor's size, or a read fails, the blob is requested
/// again from the byte reached (`Range`), up to
/// [`RegistryOptions::retries`] times per blob with the same backoff. The
/// caller's digest check covers the joined bytes.
struct Resuming<'a> {
    registry: &'a Registry,
    digest: String,
    size: u64,
    pos: u64,
    resumes: u32,
    inner: Box<dyn Read + Send + 'static>,
}

impl Read for Resuming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let failure = match self.inner.read(buf) {
                Ok(0) if self.pos < self.size && !buf.is_empty() => None,
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Some(e),
            };
            if self.resumes >= self.registry.options.retries {
                // Out of retries: a short blob is the caller's size error,
                // a failed read is this read's error.
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(0),
                };
            }
            self.resumes += 1;
            self.registry.backoff(self.resumes);
            self.inner = self
                .registry
                .get_blob(&self.digest, self.pos, self.size.saturating_add(1))
                .map_err(std::io::Error::other)?;
        }
    }
}

/// A manifest or index as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub json: serde_json::Value,
}

/// The OCI name of this machine's architecture (`amd64` on x86_64).
pub fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl ImageSource for Registry {
    type Error = RegistryError;

    fn describe(&self) -> String {
        let mut s = format!(
            "registry {}/{}",
            self.reference.host, self.reference.repository
        );
        if let Some(t) = &self.reference.tag {
            s.push_str(&format!(":{t}"));
        }
        if let Some(d) = &self.reference.digest {
            s.push_str(&format!("@{d}"));
        }
        s
    }

    fn manifest(&self) -> Result<(Vec<u8>, OciDigest), RegistryError> {
        let m = self.resolve()?;
        Ok((m.bytes, m.digest))
    }

    fn open_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + '_>, RegistryError> {
        if sha256_hex(digest).is_err() {
            return Err(self.protocol_error(format!("blob {digest}"), "not a sha256 digest"));
        }
        Ok(Box::new(Resuming {
            registry: self,
            digest: digest.to_string(),
            size,
            pos: 0,
            resumes: 0,
            inner: self.get_blob(digest, 0, size.saturating_add(1))?,
        }))
    }

    /// The last seal listed beside `manifest_digest` that reads cleanly
    /// (the tag schema appends, so that is the latest push); referrers
    /// that do not are skipped unless none does. Reads no layer.
    fn seal(&self, manifest_digest: &str) -> Result<Option<SealPair>, RegistryError> {
        Ok(self.seals(manifest_digest)?.pop())
    }

    /// Every seal listed beside `manifest_digest` that reads cleanly, in
    /// the registry's order (the tag schema's is push order); a broken
    /// referrer is skipped, and reported only when no seal reads.
    fn seals(&self, manifest_digest: &str) -> Result<Vec<SealPair>, RegistryError> {
        let found = self.find_seals(manifest_digest)?;
        if found.seals.is_empty() {
            if let Some(e) = found.broken.into_iter().next() {
                return Err(e);
            }
        }
        Ok(found.seals.into_iter().map(|s| s.pair).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("docker://127.0.0.1:5000/os/root:v2").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.repository, "os/root");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.manifest_ref(), "v2");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("docker://localhost/root@{d}")).unwrap();
        assert_eq!((r.host.as_str(), r.tag.as_deref()), ("localhost", None));
        assert_eq!(r.manifest_ref(), d);
        let r = Reference::parse("docker://debian").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str()),
            ("docker.io", "library/debian")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = Reference::parse("docker://reg.example:443/a/b").unwrap();
        assert_eq!(r.to_string(), "docker://reg.example:443/a/b:latest");
        for bad in [
            "127.0.0.1:5000/x",
            "docker://h.example/",
            "docker://h.example/UPPER",
            "docker://h.example/a//b",
            "docker://h.example/a:",
            "docker://h.example/a@sha256:abc",
            "docker://h.example/a:-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
