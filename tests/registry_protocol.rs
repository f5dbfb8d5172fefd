//! The registry client against an in-process registry that speaks what
//! Debian's distribution 2.8 does not: Bearer tokens and the OCI 1.1
//! referrers API (`OCI-Subject` on a manifest PUT with a subject,
//! `GET /v2/<repo>/referrers/<digest>`), plus 503s to retry and an image
//! index to resolve. `tests/oci_registry/run` covers the real registry
//! (Basic auth, TLS, the tag-schema fallback); this covers the rest of the
//! protocol. The server is written for this test only: HTTP/1.1 with
//! Content-Length bodies and keep-alive, one thread per connection, on
//! 127.0.0.1.
#![cfg(feature = "tool")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealroot::oci::flatten::sha256_digest;
use sealroot::oci::registry::{Registry, RegistryOptions, SealDiscovery};
use sealroot::oci::seal_artifact::SealPair;
use sealroot::oci::source::ImageSource;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REPO: &str = "os/root";

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn resp(status: u16) -> Resp {
    Resp {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    /// reference (tag or digest) -> (media type, bytes)
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// subject digest -> referrer descriptors
    referrers: HashMap<String, Vec<serde_json::Value>>,
    /// (method, path, Authorization) of every request
    seen: Vec<(String, String, Option<String>)>,
    /// This many blob GETs are cut after half their body.
    truncate: usize,
}

struct Mock {
    addr: String,
    state: Arc<Mutex<State>>,
}

#[derive(Clone, Copy)]
struct Behaviour {
    bearer: bool,
    referrers_api: bool,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

fn serve(stream: TcpStream, handler: Arc<dyn Fn(&Req) -> Resp + Send + Sync>) {
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    while let Some(req) = read_request(&mut r) {
        let out = handler(&req);
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            out.status,
            out.body.len()
        );
        for (k, v) in &out.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        // A response marked X-Truncate: N sends N body bytes and hangs up,
        // as a registry dying mid-blob does.
        let cut = out
            .headers
            .iter()
            .find(|(k, _)| k == "X-Truncate")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body = &out.body[..cut.unwrap_or(out.body.len())];
        if req.method != "HEAD" && w.write_all(body).is_err() {
            return;
        }
        if cut.is_some() {
            return;
        }
    }
}

impl Mock {
    fn start(b: Behaviour, fail_first: usize) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let st = state.clone();
        let realm = format!("http://{addr}/token");
        let handler: Arc<dyn Fn(&Req) -> Resp + Send + Sync> =
            Arc::new(move |req: &Req| handle(&st, b, &failures, &realm, req));
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let h = handler.clone();
                std::thread::spawn(move || serve(s, h));
            }
        });
        Mock { addr, state }
    }

    fn put_manifest(&self, reference: &str, media: &str, bytes: &[u8]) {
        let mut s = self.state.lock().unwrap();
        s.manifests
            .insert(reference.into(), (media.into(), bytes.to_vec()));
        s.manifests
            .insert(sha256_digest(bytes), (media.into(), bytes.to_vec()));
    }

    fn put_blob(&self, bytes: &[u8]) -> String {
        let d = sha256_digest(bytes);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(d.clone(), bytes.to_vec());
        d
    }

    fn seen(&self) -> Vec<(String, String, Option<String>)> {
        self.state.lock().unwrap().seen.clone()
    }
}

const USER_PASS_B64: &str = "dmVuZG9yOnB3"; // vendor:pw

fn handle(st: &Mutex<State>, b: Behaviour, failures: &AtomicUsize, realm: &str, req: &Req) -> Resp {
    let auth = req.headers.get("authorization").cloned();
    st.lock()
        .unwrap()
        .seen
        .push((req.method.clone(), req.path.clone(), auth.clone()));
    if failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return resp(503);
    }
    if req.path.starts_with("/token") {
        // Credentials are required for push scopes only.
        let push = req.path.contains("push");
        if push && auth.as_deref() != Some(&format!("Basic {USER_PASS_B64}")) {
            return resp(401);
        }
        let token = if push { "tok-push" } else { "tok-pull" };
        let mut r = resp(200);
        r.body = serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap();
        return r;
    }
    let prefix = format!("/v2/{REPO}/");
    let Some(tail) = req.path.strip_prefix(&prefix) else {
        return resp(404);
    };
    if b.bearer {
        let writes = matches!(req.method.as_str(), "PUT" | "POST");
        let ok = match auth.as_deref() {
            Some("Bearer tok-push") => true,
            Some("Bearer tok-pull") => !writes,
            _ => false,
        };
        if !ok {
            let actions = if writes { "pull,push" } else { "pull" };
            let mut r = resp(401);
            r.headers.push((
                "WWW-Authenticate".into(),
                format!(
                    "Bearer realm=\"{realm}\",service=\"mock\",scope=\"repository:{REPO}:{actions}\""
                ),
            ));
            r.body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#.to_vec();
            return r;
        }
    }
    let mut s = st.lock().unwrap();
    match (req.method.as_str(), tail.split_once('/')) {
        ("GET" | "HEAD", Some(("manifests", r))) => match s.manifests.get(r) {
            Some((media, bytes)) => Resp {
                status: 200,
                headers: vec![("Content-Type".into(), media.clone())],
                body: bytes.clone(),
            },
            None => resp(404),
        },
        ("PUT", Some(("manifests", r))) => {
            let media = req.headers.get("content-type").cloned().unwrap_or_default();
            let digest = sha256_digest(&req.body);
            s.manifests
                .insert(r.to_string(), (media.clone(), req.body.clone()));
            s.manifests
                .insert(digest.clone(), (media.clone(), req.body.clone()));
            let mut out = resp(201);
            if b.referrers_api {
                let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                if let Some(subject) = v["subject"]["digest"].as_str() {
                    s.referrers
                        .entry(subject.to_string())
                        .or_default()
                        .push(serde_json::json!({
                            "mediaType": media, "digest": digest, "size": req.body.len(),
                            "artifactType": v["artifactType"],
                        }));
                    out.headers
                        .push(("OCI-Subject".into(), subject.to_string()));
                }
            }
            out
        }
        ("GET", Some(("referrers", d))) if b.referrers_api => {
            let d = d.split('?').next().unwrap();
            let list = s.referrers.get(d).cloned().unwrap_or_default();
            Resp {
                status: 200,
                headers: vec![("Content-Type".into(), OCI_INDEX.into())],
                body: serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list,
                }))
                .unwrap(),
            }
        }
        ("GET" | "HEAD", Some(("blobs", d))) => match s.blobs.get(d).cloned() {
            // Range is ignored: a full 200 answer, as some registries give.
            Some(bytes) => {
                let mut headers = Vec::new();
                if req.method == "GET" && s.truncate > 0 {
                    s.truncate -= 1;
                    headers.push(("X-Truncate".into(), (bytes.len() / 2).to_string()));
                }
                Resp {
                    status: 200,
                    headers,
                    body: bytes,
                }
            }
            None => resp(404),
        },
        ("POST", Some(("blobs", "uploads/"))) => {
            let mut r = resp(202);
            r.headers.push((
                "Location".into(),
                format!("/v2/{REPO}/blobs/uploads/u1?state=x"),
            ));
            r
        }
        ("PUT", Some(("blobs", up))) if up.starts_with("uploads/") => {
            let digest = up.split("digest=").nth(1).unwrap_or("").replace("%3A", ":");
            if sha256_digest(&req.body) != digest {
                return resp(400);
            }
            s.blobs.insert(digest, req.body.clone());
            resp(201)
        }
        _ => resp(404),
    }
}

/// An index with an arm64 and an amd64 image; returns the amd64 manifest's
/// digest and its layer bytes.
fn publish_image(m: &Mock) -> (String, Vec<u8>) {
    let layer = vec![42u8; 100_000];
    let layer_d = m.put_blob(&layer);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_d = m.put_blob(config);
    let manifest = |arch: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer.len(), "annotations": {"arch": arch}}],
        }))
        .unwrap()
    };
    let (arm, amd) = (manifest("arm64"), manifest("amd64"));
    m.put_manifest(&sha256_digest(&arm), OCI_MANIFEST, &arm);
    m.put_manifest(&sha256_digest(&amd), OCI_MANIFEST, &amd);
    let entry = |bytes: &[u8], arch: &str| {
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": sha256_digest(bytes), "size": bytes.len(),
            "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&arm, "arm64"), entry(&amd, "amd64")],
    }))
    .unwrap();
    m.put_manifest("v1", OCI_INDEX, &index);
    (sha256_digest(&amd), layer)
}

fn auth_file(dir: &std::path::Path, host: &str) -> std::path::PathBuf {
    let p = dir.join("auth.json");
    std::fs::write(
        &p,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{USER_PASS_B64}"}}}}}}"#),
    )
    .unwrap();
    p
}

fn options(m: &Mock, auth: Option<std::path::PathBuf>) -> RegistryOptions {
    RegistryOptions {
        insecure: vec![m.addr.clone()],
        auth_file: auth,
        backoff: Duration::from_millis(10),
        ..RegistryOptions::default()
    }
}

fn pair(n: u8) -> SealPair {
    SealPair {
        manifest: format!("{{\"seal\":{n}}}\n").into_bytes(),
        signature: vec![n; 64],
    }
}

#[test]
fn bearer_tokens_index_resolution_and_referrers_api() {
    let m = Mock::start(
        Behaviour {
            bearer: true,
            referrers_api: true,
        },
        0,
    );
    let (amd, layer) = publish_image(&m);
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&m, Some(auth_file(dir.path(), &m.addr)));
    let reg = Registry::open(&format!("docker://{}/{REPO}:v1", m.addr), &opts).unwrap();

    // The index resolves to this machine's architecture (amd64 here).
    let (bytes, digest) = reg.manifest().unwrap();
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(digest, amd);
    }
    assert_eq!(sha256_digest(&bytes), digest);
    let mut got = Vec::new();
    let ld = sha256_digest(&layer);
    reg.open_blob(&ld, layer.len() as u64)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, layer);

    // A blob cut mid-body twice is resumed (here from a registry that
    // ignores Range: the bytes already read are skipped) and joins whole.
    m.state.lock().unwrap().truncate = 2;
    let before = m.seen().len();
    let mut got = Vec::new();
    reg.open_blob(&ld, layer.len() as u64)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, layer);
    let gets = m.seen()[before..]
        .iter()
        .filter(|s| s.0 == "GET" && s.1.ends_with(&ld))
        .count();
    assert_eq!(gets, 3, "the first GET and two resumes");

    // Push through a push-scoped token; the registry takes the subject.
    let pushed = reg.push_seal(&pair(1)).unwrap();
    assert!(pushed.referrers_api);
    assert_eq!(pushed.subject, digest);
    let tag = format!("sha256-{}", &digest[7..]);
    assert!(
        !m.state.lock().unwrap().manifests.contains_key(&tag),
        "no fallback tag when the registry has the referrers API"
    );

    let found = reg.find_seals(&digest).unwrap();
    assert_eq!(found.discovery, SealDiscovery::ReferrersApi);
    assert_eq!(found.seals.len(), 1);
    assert_eq!(found.seals[0].pair, pair(1));
    assert_eq!(reg.seal(&digest).unwrap(), Some(pair(1)));

    let seen = m.seen();
    let tokens: Vec<_> = seen.iter().filter(|s| s.1.starts_with("/token")).collect();
    assert!(tokens
        .iter()
        .any(|t| t.1.contains("pull%2Cpush") && t.2.as_deref() == Some("Basic dmVuZG9yOnB3")));
    // Every write carried the push token.
    assert!(seen
        .iter()
        .filter(|s| s.0 == "PUT" && s.1.starts_with("/v2/"))
        .all(|s| s.2.as_deref() == Some("Bearer tok-push")));
}

#[test]
fn anonymous_bearer_pull_and_push_refused_without_credentials() {
    let m = Mock::start(
        Behaviour {
            bearer: true,
            referrers_api: true,
        },
        0,
    );
    let (amd, _) = publish_image(&m);
    let dir = tempfile::tempdir().unwrap();
    // An auth file with no entry for this registry: anonymous.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"auths":{}}"#).unwrap();
    let reg = Registry::open(
        &format!("docker://{}/{REPO}@{amd}", m.addr),
        &options(&m, Some(empty)),
    )
    .unwrap();
    assert_eq!(reg.manifest().unwrap().1, amd);
    let err = reg.push_seal(&pair(2)).unwrap_err();
    let text = err.to_string();
    assert_eq!(err.status(), Some(401), "{text}");
    assert!(
        text.contains(&m.addr) && text.contains("token from"),
        "{text}"
    );
}

#[test]
fn tag_schema_when_no_oci_subject() {
    let m = Mock::start(
        Behaviour {
            bearer: false,
            referrers_api: false,
        },
        0,
    );
    publish_image(&m);
    let reg = Registry::open(
        &format!("docker://{}/{REPO}:v1", m.addr),
        &options(&m, None),
    )
    .unwrap();
    let a = reg.push_seal(&pair(3)).unwrap();
    let b = reg.push_seal(&pair(4)).unwrap();
    assert!(!a.referrers_api && !b.referrers_api);
    // Pushing the same seal again adds no second entry.
    reg.push_seal(&pair(3)).unwrap();
    let found = reg.find_seals(&a.subject).unwrap();
    assert_eq!(found.discovery, SealDiscovery::TagSchema);
    assert_eq!(found.seals.len(), 2);
    // The last one listed is the one offered to the verifier.
    assert_eq!(reg.seal(&a.subject).unwrap(), Some(pair(4)));

    // A referrer naming another subject is skipped and reported.
    let other = sha256_digest(b"another image");
    let stray = reg.find_seals(&other).unwrap();
    assert!(stray.seals.is_empty() && stray.broken.is_empty());
    let tag = format!("sha256-{}", &a.subject[7..]);
    let (media, idx) = m.state.lock().unwrap().manifests[&tag].clone();
    let art = sealroot::oci::seal_artifact::build(
        &sealroot::oci::seal_artifact::Subject {
            digest: &other,
            size: 1,
            media_type: OCI_MANIFEST,
        },
        &pair(5),
    );
    for blob in &art.blobs {
        m.put_blob(&blob.bytes);
    }
    m.put_manifest(&art.digest, OCI_MANIFEST, &art.manifest);
    let mut v: serde_json::Value = serde_json::from_slice(&idx).unwrap();
    v["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": art.digest, "size": art.manifest.len(),
            "artifactType": sealroot::oci::seal_artifact::SEAL_ARTIFACT_TYPE,
        }));
    m.put_manifest(&tag, &media, &serde_json::to_vec(&v).unwrap());
    let found = reg.find_seals(&a.subject).unwrap();
    assert_eq!(found.seals.len(), 2);
    assert_eq!(found.broken.len(), 1);
    assert!(found.broken[0].to_string().contains("its subject is"));
    // The stray is last in the list, but it is not offered.
    assert_eq!(reg.seal(&a.subject).unwrap(), Some(pair(4)));
}

#[test]
fn retries_503_then_gives_up_with_the_status() {
    let m = Mock::start(
        Behaviour {
            bearer: false,
            referrers_api: false,
        },
        3,
    );
    publish_image(&m);
    let reference = format!("docker://{}/{REPO}:v1", m.addr);
    let reg = Registry::open(&reference, &options(&m, None)).unwrap();
    reg.manifest().unwrap();

    let m = Mock::start(
        Behaviour {
            bearer: false,
            referrers_api: false,
        },
        100,
    );
    let reference = format!("docker://{}/{REPO}:v1", m.addr);
    let mut opts = options(&m, None);
    opts.retries = 2;
    let err = Registry::open(&reference, &opts)
        .unwrap()
        .manifest()
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(m.seen().len(), 3, "one try and two retries");
    let text = err.to_string();
    assert!(
        text.contains(&format!("registry {}", m.addr)) && text.contains("repository os/root"),
        "{text}"
    );
}
