//! Helpers shared by the integration tests. Each file in tests/ is its own
//! crate and uses only some of these, hence the module-wide `dead_code`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use sealroot::digest::HashAlgorithm;
use sealroot::image::dumpfile;
use sealroot::image::erofs::{write_image, WriteOptions};
use sealroot::image::fsverity;
use sealroot::image::repo::Repo;

/// The composefs test vectors: env `SEALROOT_TESTDATA`, else
/// `../shared/testdata/composefs` beside the checkout.
pub fn testdata() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SEALROOT_TESTDATA").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/composefs")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// A test input or tool is missing: a failure under `CI=true` (CI always
/// has it), a visible skip elsewhere. Call it and return from the test.
pub fn missing(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is missing, and CI=true requires it"
    );
    eprintln!("SKIP: {what} is missing");
}

/// [`testdata`]; when it is absent, [`missing`] (a failure under CI).
pub fn testdata_or_skip() -> Option<PathBuf> {
    let dir = testdata();
    if dir.is_none() {
        missing("the composefs test vectors (../shared/testdata/composefs or SEALROOT_TESTDATA)");
    }
    dir
}

/// The upstream version of the C reference `mkcomposefs` the tests use.
pub const C_MKCOMPOSEFS_VERSION: &str = "1.0.8";

/// The C reference `mkcomposefs`: env `MKCOMPOSEFS` when set (it must then
/// exist), else the binary `scripts/setup.d/40-mkcomposefs` caches at
/// `${XDG_CACHE_HOME:-$HOME/.cache}/sealroot/peers/mkcomposefs-1.0.8/`.
pub fn c_mkcomposefs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MKCOMPOSEFS") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "MKCOMPOSEFS={} does not exist", p.display());
        return Some(p);
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    let bin = cache
        .join("sealroot/peers")
        .join(format!("mkcomposefs-{C_MKCOMPOSEFS_VERSION}"))
        .join("mkcomposefs");
    bin.is_file().then_some(bin)
}

/// [`c_mkcomposefs`]; when it is absent, [`missing`] (a failure under CI).
pub fn c_mkcomposefs_or_skip() -> Option<PathBuf> {
    let bin = c_mkcomposefs();
    if bin.is_none() {
        missing(&format!(
            "C mkcomposefs {C_MKCOMPOSEFS_VERSION} (set MKCOMPOSEFS, or run scripts/setup.d/40-mkcomposefs)"
        ));
    }
    bin
}

/// A vector's bytes, decompressed with `gzip -dc` when it ends in `.gz`.
pub fn read_vector(path: &Path) -> Vec<u8> {
    if path.extension().is_some_and(|e| e == "gz") {
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(path)
            .output()
            .expect("run gzip");
        assert!(out.status.success(), "gzip -dc {}", path.display());
        out.stdout
    } else {
        std::fs::read(path).unwrap()
    }
}

/// Vectors the reference parses leniently.
pub const LENIENT: &[&str] = &[
    "no-newline.dump",
    "longlink.dump",
    "honggfuzz-longlink-unterminated.dump",
];

/// The writer options for vector `base`: the format version pinned by
/// `<base>.version` if present, else the defaults.
pub fn vector_options(dir: &Path, base: &str) -> WriteOptions {
    match std::fs::read_to_string(dir.join(format!("{base}.version"))) {
        Ok(v) => {
            let v: u32 = v.trim().parse().unwrap();
            WriteOptions {
                min_version: v,
                max_version: v,
            }
        }
        Err(_) => WriteOptions::default(),
    }
}

/// Parse vector `base` and write its image; a failure is pushed onto
/// `failures` and gives `None`.
pub fn vector_image(
    base: &str,
    input: &[u8],
    strict: bool,
    opts: &WriteOptions,
    failures: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let tree = match dumpfile::parse(input, strict) {
        Ok(t) => t,
        Err(err) => {
            failures.push(format!("{base}: parse failed: {err}"));
            return None;
        }
    };
    match write_image(&tree, opts) {
        Ok(i) => Some(i),
        Err(err) => {
            failures.push(format!("{base}: write failed: {err}"));
            None
        }
    }
}

/// The committed test keys: `keys/test` in the source tree.
pub fn test_keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/test")
}

/// The path of test key `name` (under [`test_keys_dir`]) as a string.
pub fn key(name: &str) -> String {
    test_keys_dir().join(name).to_string_lossy().into_owned()
}

/// A `Command` for the `sealctl` binary of this build.
pub fn sealctl_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealctl"))
}

/// Start `sealctl args` with stdout and stderr discarded.
pub fn spawn_sealctl_quiet<S: AsRef<OsStr>>(args: &[S]) -> Child {
    sealctl_cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Run `sealctl args` with `SOURCE_DATE_EPOCH` removed, or set to `sde`.
pub fn sealctl_sde<S: AsRef<OsStr>>(args: &[S], sde: Option<&str>) -> Output {
    let mut c = sealctl_cmd();
    c.args(args).env_remove("SOURCE_DATE_EPOCH");
    if let Some(v) = sde {
        c.env("SOURCE_DATE_EPOCH", v);
    }
    c.output().unwrap()
}

/// Run `sealctl args` with `SOURCE_DATE_EPOCH` removed.
pub fn sealctl<S: AsRef<OsStr>>(args: &[S]) -> Output {
    sealctl_sde(args, None)
}

/// The `(problem, path)` pairs of a `sealctl verify --json` report.
pub fn problems(v: &serde_json::Value) -> Vec<(String, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["problem"].as_str().unwrap().to_string(),
                p["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Assert that the command exited successfully, showing its stderr if not.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed of a test's pseudo-random choices: env `SEALROOT_TEST_SEED`
/// (decimal, or hex after `0x`) when set, else the test's own fixed
/// `default`, so a run is repeatable. Printed, so a failure names it.
pub fn test_seed(default: u64) -> u64 {
    let seed = match std::env::var("SEALROOT_TEST_SEED") {
        Ok(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .unwrap_or_else(|_| panic!("SEALROOT_TEST_SEED={s:?} is not a number")),
        Err(_) => default,
    };
    eprintln!("seed {seed:#x} (set SEALROOT_TEST_SEED to choose another)");
    seed
}

/// Kill tests: go on after the planned `rounds` while no kill has landed
/// mid-operation yet (`landed == 0`), up to four times as many rounds, so
/// an unlucky draw of kill moments (the window is a fraction of a run that
/// a loaded machine stretches) costs time rather than a failure; a test
/// whose window really is never hit still fails.
pub fn more_kill_rounds(round: usize, rounds: usize, landed: usize) -> bool {
    round < rounds || (landed == 0 && round < 4 * rounds)
}

/// xorshift from [`test_seed`]: enough to scatter kill times.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(default: u64) -> Rng {
        Rng(test_seed(default) | 1)
    }

    /// The next raw state.
    pub fn step(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next state, reduced below `below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.step() % below
    }
}

/// Let `child` run for `micros` microseconds, then SIGKILL and reap it;
/// returns whether it had already exited.
pub fn kill_after(mut child: Child, micros: u64) -> bool {
    std::thread::sleep(Duration::from_micros(micros));
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    finished
}

/// Run `openssl args`.
pub fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed for these tests")
}

/// `openssl pkeyutl -sign -rawin`: sign file `msg` with private key `key`
/// into `sig`.
pub fn openssl_sign(key: &Path, msg: &Path, sig: &Path) -> Output {
    Command::new("openssl")
        .args(["pkeyutl", "-sign", "-inkey"])
        .arg(key)
        .args(["-rawin", "-in"])
        .arg(msg)
        .arg("-out")
        .arg(sig)
        .output()
        .expect("openssl must be installed for these tests")
}

/// `openssl pkeyutl -verify -rawin`: check signature file `sig` over file
/// `msg` with public key `pubkey`.
pub fn openssl_verify(pubkey: &Path, msg: &Path, sig: &Path) -> Output {
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(pubkey)
        .args(["-rawin", "-in"])
        .arg(msg)
        .arg("-sigfile")
        .arg(sig)
        .output()
        .expect("openssl must be installed for these tests")
}

/// Every object under `r`'s `objects/` (dot-prefixed top-level entries
/// aside) has the content its `alg` digest name says; returns how many.
pub fn objects_named_by_content(r: &Repo, alg: HashAlgorithm) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(r.objects_dir()).unwrap() {
        let sub = sub.unwrap();
        let name = sub.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).unwrap() {
            let f = f.unwrap();
            let fname = f.file_name().into_string().unwrap();
            let d = fsverity::digest_bytes(alg, &std::fs::read(f.path()).unwrap());
            assert_eq!(
                sealroot::layout::object_name(&d),
                format!("{name}/{fname}"),
                "wrong content under a digest name"
            );
            n += 1;
        }
    }
    n
}

/// The hex fs-verity digest (SHA-256, 4 KiB blocks) of `path` as
/// fsverity-utils' `fsverity digest` computes it: an oracle independent of
/// sealroot's own Merkle code. The caller checks that `fsverity` exists.
pub fn fsverity_utils_hex(path: &Path) -> String {
    let o = Command::new("fsverity")
        .arg("digest")
        .arg(path)
        .output()
        .expect("run fsverity digest");
    assert!(
        o.status.success(),
        "fsverity digest {}: {:?}",
        path.display(),
        o
    );
    let line = String::from_utf8(o.stdout).expect("fsverity prints UTF-8");
    line.strip_prefix("sha256:")
        .and_then(|l| l.split_whitespace().next())
        .expect("fsverity digest prints sha256:<hex> <path>")
        .to_string()
}

/// A command's stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether `tool` can be run (`--version` or `version`).
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok()
}

/// `sha256:<hex>` of the raw Ed25519 key in a public key PEM, computed by
/// openssl alone (its DER SubjectPublicKeyInfo, then `openssl dgst`): an
/// oracle independent of `keys::fingerprint`.
pub fn openssl_fingerprint(pub_pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(pub_pem)
        .output()
        .expect("run openssl pkey");
    assert!(out.status.success(), "openssl pkey: {}", text(&out));
    assert_eq!(out.stdout.len(), 44, "ed25519 SPKI DER is 44 bytes");
    let hash = openssl_dgst("sha256", &out.stdout[12..]);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `openssl dgst -ALG -binary` of `data`.
pub fn openssl_dgst(alg: &str, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", &format!("-{alg}"), "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), data)
        .expect("write to openssl dgst");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst -{alg}: {}", text(&out));
    out.stdout
}

/// Run `cmd`; fail the test with its output unless it succeeds.
#[track_caller]
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
}

/// An empty directory `name` under the integration tests' scratch
/// directory (`CARGO_TARGET_TMPDIR`), emptied first if a run left it.
pub fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Every path under `dir` with its bytes (directories: None; symlinks:
/// their target), for "the repository (or ESP) is as it was"; `{}` when
/// `dir` does not exist. A top-level `oci-cache` is left out: the layer
/// cache is a pull's memo, not repository content (a refused pull may drop
/// entries it used).
pub fn listing(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if rel == Path::new("oci-cache") {
                continue;
            }
            if m.is_dir() {
                out.insert(rel, None);
                stack.push(e.path());
            } else if m.file_type().is_symlink() {
                let target = fs::read_link(e.path()).unwrap();
                out.insert(rel, Some(target.into_os_string().into_encoded_bytes()));
            } else {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// `sealctl verify --repo REPO --key <the test public key> HEX`.
pub fn verify_with_test_key(repo: &Path, hex: &str) -> Output {
    sealctl(&[
        "verify",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        &key("sealroot-test.pub.pem"),
        hex,
    ])
}

// OCI image layouts made by umoci (tests/oci_layout.rs, tests/oci_update.rs).

/// Whether an OCI test can run: root (`root_for` says why it is needed)
/// and every tool of `tools` (scripts/packages/oci.txt); else [`missing`]
/// (a failure under CI) and false.
pub fn oci_ready(root_for: &str, tools: &[&str]) -> bool {
    if !rustix::process::geteuid().is_root() {
        missing(&format!("root ({root_for})"));
        return false;
    }
    if let Some(tool) = tools.iter().find(|t| !have(t)) {
        missing(&format!("{tool} (scripts/packages/oci.txt)"));
        return false;
    }
    true
}

/// `umoci args`, run in `dir`.
pub fn umoci(dir: &Path, args: &[&str]) {
    run(Command::new("umoci").current_dir(dir).args(args));
}

/// A new layout `W/L` holding the empty image `L:tag`, unpacked by
/// `umoci unpack` into the bundle `W/bundle` (its tree: `W/bundle/rootfs`).
pub fn umoci_new_image(w: &Path, tag: &str, bundle: &str) {
    umoci(w, &["init", "--layout", "L"]);
    umoci(w, &["new", "--image", &format!("L:{tag}")]);
    umoci(w, &["unpack", "--image", &format!("L:{tag}"), bundle]);
}

/// `sealctl oci seal --image IMAGE --key KEY --no-created --out OUT
/// EXTRA...`: (digest hex, path of the seal manifest written to `out`).
pub fn oci_seal(image: &str, key_path: &str, out: &Path, extra: &[&str]) -> (String, PathBuf) {
    fs::create_dir_all(out).unwrap();
    let mut args = vec![
        "oci",
        "seal",
        "--image",
        image,
        "--key",
        key_path,
        "--no-created",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = sealctl(&args);
    assert_success(&o);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("digest "))
        .unwrap()
        .to_owned();
    let json = out.join(format!("{hex}.json"));
    assert!(json.is_file(), "{stdout}");
    (hex, json)
}
