//! `sealctl build` end to end: reproducible digests, objects named by
//! content, `--sign`, and `sealctl verify` catching object-level damage
//! through a real image; SIGKILL during build.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

mod common;
use common::key;
use common::sealctl_sde as sealctl;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::repo::Repo;

/// A small root tree: nested dirs, inline and external files, a symlink,
/// a hardlink, an empty file.
fn make_tree(root: &Path, files: usize) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("usr/lib/deep/er")).unwrap();
    fs::write(root.join("etc/hostname"), b"sealed\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    for i in 0..files {
        let len = 65 + (i * 7919) % 300_000;
        let data: Vec<u8> = (0..len).map(|j| ((j * 13 + i) % 256) as u8).collect();
        fs::write(root.join(format!("usr/lib/deep/er/f{i:03}")), data).unwrap();
    }
    fs::write(
        root.join("usr/bin/tool"),
        b"#!/bin/sh\necho this script is longer than sixty-four bytes, so it is external\n",
    )
    .unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("../usr/bin/tool", root.join("etc/link")).unwrap();
}

fn build(root: &Path, repo: &Path, extra: &[&str], sde: Option<&str>) -> Digest {
    let mut args = vec![
        "build",
        root.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = sealctl(&args, sde);
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Digest::parse_hex_any(text.trim()).unwrap()
}

fn objects_named_by_content(r: &Repo) -> usize {
    common::objects_named_by_content(r, HashAlgorithm::Sha256)
}

#[test]
fn build_is_reproducible_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    make_tree(&root, 20);
    let r1 = dir.path().join("r1");
    let r2 = dir.path().join("r2");
    let d1 = build(&root, &r1, &[], None);
    let d2 = build(&root, &r2, &[], None);
    assert_eq!(d1, d2);
    let (a, b) = (Repo::new(&r1), Repo::new(&r2));
    assert_eq!(
        fs::read(a.image_path(&d1)).unwrap(),
        fs::read(b.image_path(&d2)).unwrap()
    );
    // The image's name is its fs-verity digest.
    assert_eq!(
        fsverity::digest_bytes(HashAlgorithm::Sha256, &fs::read(a.image_path(&d1)).unwrap()),
        d1
    );
    // The reference tool agrees on the image digest (when installed), and
    // `sealctl mkcomposefs` on the same tree gives the same digest.
    let img = a.image_path(&d1);
    if let Ok(out) = Command::new("fsverity").arg("digest").arg(&img).output() {
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("sha256:{} {}\n", d1.to_hex(), img.display())
        );
    } else {
        common::missing("fsverity (fsverity-utils)");
    }
    let mk = sealctl(
        &["mkcomposefs", "--print-digest-only", root.to_str().unwrap()],
        None,
    );
    assert_eq!(String::from_utf8(mk.stdout).unwrap().trim(), d1.to_hex());
    // 20 generated files + the script (hardlinked once) are external, and
    // the image is an object too, linked from images/ (composefs-rs layout).
    assert_eq!(objects_named_by_content(&a), 22);
    assert_eq!(
        fs::read_link(a.image_path(&d1)).unwrap(),
        Path::new("../objects").join(sealroot::layout::object_name(&d1))
    );
    // meta.json as composefs-rs writes it.
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(r1.join("composefs/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["algorithm"], "fsverity-sha256-12");
    // Building again into the same repository changes nothing.
    assert_eq!(build(&root, &r1, &[], None), d1);

    // A copy with newer mtimes differs as found, but not under
    // SOURCE_DATE_EPOCH older than both, nor with --use-epoch.
    let copy = dir.path().join("copy");
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(&root)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let later = SystemTime::now() + Duration::from_secs(3600);
    for entry in ["etc/hostname", "usr/lib/deep/er/f001", "usr/bin"] {
        let f = fs::File::options()
            .read(true)
            .open(copy.join(entry))
            .unwrap();
        f.set_modified(later).unwrap();
    }
    let r3 = dir.path().join("r3");
    assert_ne!(build(&copy, &r3, &[], None), d1);
    let e1 = build(&root, &r3, &[], Some("1000000000"));
    let e2 = build(&copy, &r3, &[], Some("1000000000"));
    assert_eq!(e1, e2);
    let z1 = build(&root, &r3, &["--use-epoch"], None);
    assert_eq!(build(&copy, &r3, &["--use-epoch"], None), z1);
    assert_ne!(z1, e1);

    // verify: clean, then each kind of damage by name and path.
    let pubk = key("sealroot-test.pub.pem");
    let signed = build(
        &root,
        &r1,
        &["--sign", &key("sealroot-test.pem"), "--serial", "9"],
        None,
    );
    assert_eq!(signed, d1);
    let verify = |r: &Path| {
        let out = sealctl(
            &[
                "verify",
                "--json",
                "--repo",
                r.to_str().unwrap(),
                "--key",
                &pubk,
                &d1.to_hex(),
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"].as_bool().unwrap(), out.status.success());
        v
    };
    let v = verify(&r1);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["objects"], 21);
    assert_eq!(v["seal"]["serial"], 9);

    // Damage two file objects chosen by their content, never by listing
    // order: the image is an object too, and damaging it would be reported
    // as image-digest-mismatch instead.
    let object_of = |file: &str| {
        let data = fs::read(root.join(file)).unwrap();
        a.object_path(&fsverity::digest_bytes(HashAlgorithm::Sha256, &data))
    };
    let flipped = object_of("usr/bin/tool");
    let gone = object_of("usr/lib/deep/er/f000");
    let image_object = fs::canonicalize(a.image_path(&d1)).unwrap();
    for damaged in [&flipped, &gone] {
        assert!(damaged.is_file(), "{}", damaged.display());
        assert_ne!(fs::canonicalize(damaged).unwrap(), image_object);
    }
    let mut data = fs::read(&flipped).unwrap();
    data[10] ^= 1;
    fs::write(&flipped, &data).unwrap();
    fs::remove_file(&gone).unwrap();
    let v = verify(&r1);
    let problems: Vec<(String, String)> = common::problems(&v);
    assert!(
        problems.contains(&(
            "object-digest-mismatch".into(),
            flipped.display().to_string()
        )),
        "{problems:?}"
    );
    assert!(
        problems.contains(&("object-missing".into(), gone.display().to_string())),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    // A rebuild repairs the missing object (the damaged one keeps its name:
    // the store never rewrites an existing object; verify keeps reporting it).
    build(&root, &r1, &[], None);
    assert!(gone.exists());
}

#[test]
fn sha512_build_names_everything_by_sha512_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    make_tree(&root, 5);
    let repo = dir.path().join("repo");
    let sk = key("sealroot-test.pem");
    let d = build(&root, &repo, &["--hash-alg", "sha512", "--sign", &sk], None);
    assert_eq!(d.algorithm(), HashAlgorithm::Sha512);
    let r = Repo::new(&repo);
    let image = fs::read(r.image_path(&d)).unwrap();
    assert_eq!(fsverity::digest_bytes(HashAlgorithm::Sha512, &image), d);
    assert!(common::objects_named_by_content(&r, HashAlgorithm::Sha512) > 0);
    // The image's overlay metacopy xattrs carry SHA-512 digests, and every one
    // of them is an object in the store.
    let referenced = sealroot::image::erofs::reader::referenced_objects(&image).unwrap();
    assert!(!referenced.is_empty());
    for obj in &referenced {
        assert_eq!(obj.algorithm(), HashAlgorithm::Sha512);
        assert!(r.object_path(obj).is_file());
    }
    let hex = d.to_hex();
    let pk = key("sealroot-test.pub.pem");
    let out = sealctl(
        &[
            "verify",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            &pk,
            &hex,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sealctl(&["cmdline", "--repo", repo.to_str().unwrap(), &hex], None);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("composefs.digest=v1-sha512-12:{hex}")
    );
    let out = sealctl(
        &[
            "build",
            root.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
            "--hash-alg",
            "sha1",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown hash algorithm \"sha1\""));
}

#[test]
fn build_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = sealctl(
        &[
            "build",
            missing.to_str().unwrap(),
            "--repo",
            dir.path().join("r").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("sealctl build: ") && err.contains("nope"),
        "{err}"
    );
    let root = dir.path().join("root");
    make_tree(&root, 1);
    let out = sealctl(
        &[
            "build",
            root.to_str().unwrap(),
            "--repo",
            dir.path().join("r").to_str().unwrap(),
            "--sign",
            &key("sealroot-test.pub.pem"),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected \"PRIVATE KEY\""), "{err}");
    // The key is checked before any work: nothing was written.
    assert!(
        !dir.path().join("r/composefs/images").exists()
            || fs::read_dir(dir.path().join("r/composefs/images"))
                .unwrap()
                .next()
                .is_none()
    );
    let out = sealctl(
        &[
            "build",
            root.to_str().unwrap(),
            "--repo",
            dir.path().join("r").to_str().unwrap(),
        ],
        Some("soon"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SOURCE_DATE_EPOCH=\"soon\" is not a number of seconds"),
        "{err}"
    );
}

#[test]
fn build_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    make_tree(&root, 80);
    let repo = dir.path().join("repo");
    let r = Repo::new(&repo);
    let mut rng = common::Rng::seeded(0x0005_ea1b_111d);
    // Time one full build of this tree so the kills spread over a whole
    // build (scan, image write, commit, publish) on this machine's speed.
    let t0 = std::time::Instant::now();
    build(&root, &dir.path().join("timing"), &[], None);
    let span = (t0.elapsed().as_micros() as u64).max(1000);
    let (rounds, mut round, mut killed_before_image) = (16, 0, 0);
    while common::more_kill_rounds(round, rounds, killed_before_image) {
        let seed = rng.step();
        let child = common::spawn_sealctl_quiet(&[
            "build",
            root.to_str().unwrap(),
            "--repo",
            repo.to_str().unwrap(),
        ]);
        common::kill_after(child, seed % span);
        if r.objects_dir().exists() {
            objects_named_by_content(&r);
        }
        let has_image = r.images_dir().exists()
            && fs::read_dir(r.images_dir())
                .unwrap()
                .any(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'));
        if !has_image {
            killed_before_image += 1;
        } else {
            for e in fs::read_dir(r.images_dir()).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if !name.starts_with('.') {
                    let d =
                        fsverity::digest_bytes(HashAlgorithm::Sha256, &fs::read(e.path()).unwrap());
                    assert_eq!(
                        d.to_hex(),
                        name,
                        "round {round}: wrong image content under its name"
                    );
                }
            }
        }
        if seed % 2 == 0 {
            fs::remove_dir_all(&repo).ok();
        }
        round += 1;
    }
    let d = build(&root, &repo, &[], None);
    let out = sealctl(
        &["verify", "--repo", repo.to_str().unwrap(), &d.to_hex()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{killed_before_image} of {round} kills landed before the image was published");
    assert!(
        killed_before_image > 0,
        "no kill landed mid-build; the test proved nothing"
    );
}
