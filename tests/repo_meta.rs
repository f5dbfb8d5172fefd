//! `composefs/meta.json` and images stored as objects (composefs-rs 0.8+
//! layout): written on build, never added silently to an older repository,
//! checked by verify, and checked by the boot before it measures anything.

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;
use common::text;

fn tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/os-release"), b"ID=test\n").unwrap();
    fs::write(root.join("big"), vec![7u8; 10_000]).unwrap();
}

fn build(root: &Path, repo: &Path) -> std::process::Output {
    common::sealctl(&[
        "build",
        root.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ])
}

fn digest_of(repo: &Path) -> String {
    let names: Vec<String> = fs::read_dir(repo.join("composefs/images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

#[test]
fn older_repository_is_upgraded_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let repo = dir.path().join("repo");
    let o = build(&root, &repo);
    common::assert_success(&o);
    let meta = repo.join("composefs/meta.json");
    assert!(meta.is_file());

    // An older sealctl's repository: content, no meta.json.
    fs::remove_file(&meta).unwrap();
    let o = build(&root, &repo);
    assert!(
        !o.status.success(),
        "built into an old repository: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("no composefs/meta.json") && text(&o).contains("sealctl upgrade-repo"),
        "{}",
        text(&o)
    );
    assert!(!meta.exists(), "meta.json written silently");
    // verify names the missing file.
    let hex = digest_of(&repo);
    let o = common::sealctl(&["verify", "--repo", repo.to_str().unwrap(), "--json", &hex]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        common::problems(&v)
            .iter()
            .any(|(p, path)| p == "meta-missing" && path.ends_with("composefs/meta.json")),
        "{v}"
    );

    // The explicit upgrade infers the algorithm from the images.
    let o = common::sealctl(&["upgrade-repo", "--repo", repo.to_str().unwrap()]);
    common::assert_success(&o);
    assert!(text(&o).contains("fsverity-sha256-12"), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    // Twice is refused, and changes nothing.
    let before = fs::read(&meta).unwrap();
    let o = common::sealctl(&["upgrade-repo", "--repo", repo.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(fs::read(&meta).unwrap(), before);
    common::assert_success(&build(&root, &repo));
    let o = common::sealctl(&["verify", "--repo", repo.to_str().unwrap(), &hex]);
    common::assert_success(&o);
}

#[test]
fn meta_json_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let repo = dir.path().join("repo");
    common::assert_success(&build(&root, &repo));
    let meta = repo.join("composefs/meta.json");
    let hex = digest_of(&repo);

    // A newer repository format: build and verify refuse it.
    fs::write(&meta, br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#).unwrap();
    let o = build(&root, &repo);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("repository format version 2"),
        "{}",
        text(&o)
    );
    let o = common::sealctl(&["verify", "--repo", repo.to_str().unwrap(), "--json", &hex]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        common::problems(&v)
            .iter()
            .any(|(p, _)| p == "meta-invalid"),
        "{v}"
    );

    // A SHA-512 repository does not take SHA-256 content.
    fs::write(&meta, br#"{"version":1,"algorithm":"fsverity-sha512-12"}"#).unwrap();
    let o = build(&root, &repo);
    assert!(!o.status.success());
    assert!(text(&o).contains("fsverity-sha512-12"), "{}", text(&o));

    // composefs-rs's V1 marker: readable, but sealctl (V0 images) won't add.
    fs::write(
        &meta,
        br#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"read-only-compatible":["v1_erofs"]},"erofs_formats":{"default":1}}"#,
    )
    .unwrap();
    let o = build(&root, &repo);
    assert!(!o.status.success());
    assert!(text(&o).contains("v1_erofs"), "{}", text(&o));
    let o = common::sealctl(&["verify", "--repo", repo.to_str().unwrap(), &hex]);
    common::assert_success(&o);
}

/// install gives a new target the source's meta.json as it is (a cfsctl
/// repository's V1 marker must survive), and installs into a target whose
/// meta.json has composefs-rs's read-only-compatible V1 marker.
#[test]
fn install_keeps_the_source_meta_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let repo = dir.path().join("repo");
    common::assert_success(&build(&root, &repo));
    let hex = digest_of(&repo);
    let v1 = br#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"compatible":[],"read-only-compatible":["v1_erofs"],"incompatible":[]},"erofs_formats":{"default":1}}
"#;
    fs::write(repo.join("composefs/meta.json"), v1).unwrap();
    let target = dir.path().join("target");
    fs::create_dir(&target).unwrap();
    let install = || {
        common::sealctl(&[
            "install",
            "--repo",
            repo.to_str().unwrap(),
            "--sysroot",
            target.to_str().unwrap(),
            "--copy-only",
            &hex,
        ])
    };
    let o = install();
    common::assert_success(&o);
    assert_eq!(fs::read(target.join("composefs/meta.json")).unwrap(), v1);
    // Again, into the now-populated target: still fine, still the same file.
    common::assert_success(&install());
    assert_eq!(fs::read(target.join("composefs/meta.json")).unwrap(), v1);
    // A target with content and no meta.json is not written silently.
    fs::remove_file(target.join("composefs/meta.json")).unwrap();
    let o = install();
    assert!(!o.status.success());
    assert!(text(&o).contains("sealctl upgrade-repo"), "{}", text(&o));
}

/// `sealroot prepare` reads meta.json beneath composefs/ before measuring.
#[test]
fn boot_refuses_a_newer_or_symlinked_meta_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let sys = dir.path().join("sys");
    common::assert_success(&build(&root, &sys));
    let hex = digest_of(&sys);
    let meta = sys.join("composefs/meta.json");
    let prepare = || {
        Command::new(env!("CARGO_BIN_EXE_sealroot"))
            .env("SEALROOT_LOG", "stderr")
            .args(["prepare", "--sysroot"])
            .arg(&sys)
            .args(["--cmdline", &format!("root=/dev/vda composefs={hex}")])
            .arg("--config")
            .arg(dir.path().join("no-config.json"))
            .output()
            .unwrap()
    };
    // The good file passes (and the run stops at measuring on this host).
    let o = prepare();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("sealroot: repository format 1 (fsverity-sha256-12)"),
        "{err}"
    );
    assert!(err.contains("fs-verity not supported"), "{err}");

    fs::write(&meta, br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#).unwrap();
    let o = prepare();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("sealroot: refusing to boot: repository composefs/meta.json names repository format version 2; this sealroot understands up to 1"),
        "{err}"
    );
    assert!(
        !err.contains("sealroot: measured ") && !err.contains("fs-verity not supported"),
        "{err}"
    );

    fs::write(dir.path().join("elsewhere.json"), b"{}").unwrap();
    fs::remove_file(&meta).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere.json"), &meta).unwrap();
    let o = prepare();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("sealroot: refusing to boot: repository composefs/meta.json is a symlink or has one in its path"),
        "{err}"
    );

    // No meta.json at all (an older sealctl's repository): the image and
    // seal checks decide alone.
    fs::remove_file(&meta).unwrap();
    let o = prepare();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("has no composefs/meta.json"), "{err}");
    assert!(err.contains("fs-verity not supported"), "{err}");
}
