//! verify and install through real composefs images (made from a dumpfile
//! by the EROFS writer; objects named by their fs-verity digests): objects
//! are found through the image, object damage is named, `sealctl install`
//! copies, stops at the host's missing fs-verity with the plain message,
//! and survives SIGKILL at random moments.

use std::fs;
use std::path::Path;

mod common;
use common::{key, sealctl};

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::repo::Repo;

/// A repository with `n` objects, a real image naming them, and a seal.
fn real_repo(dir: &Path, n: usize) -> (Repo, Digest, Vec<Digest>) {
    let r = Repo::new(dir);
    // Made through the library, as sealctl build would: meta.json first.
    r.write_meta(HashAlgorithm::Sha256).unwrap();
    let mut dump =
        String::from("/ 4096 40755 2 0 0 0 0.0 - - -\n/data 4096 40755 2 0 0 0 0.0 - - -\n");
    let mut objects = Vec::new();
    for i in 0..n {
        let len = 65 + (i * 104_729) % 700_000;
        let data: Vec<u8> = (0..len).map(|j| ((j * 7 + i * 3) % 255) as u8).collect();
        let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &data);
        let p = r.object_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &data).unwrap();
        dump.push_str(&format!(
            "/data/f{i:03} {len} 100644 1 0 0 0 0.0 {} - {}\n",
            sealroot::layout::object_name(&d),
            d.to_hex()
        ));
        objects.push(d);
    }
    dump.push_str("/small 5 100644 1 0 0 0 0.0 - hello -\n");
    let tree = sealroot::image::dumpfile::parse(dump.as_bytes(), true).unwrap();
    let image = sealroot::image::erofs::writer::write_image(&tree, &Default::default()).unwrap();
    let digest =
        sealroot::image::repo::publish_image(&r, &image, sealroot::digest::HashAlgorithm::Sha256)
            .unwrap();
    let out = sealctl(&[
        "sign",
        "--key",
        &key("sealroot-test.pem"),
        "--repo",
        dir.to_str().unwrap(),
        &digest.to_hex(),
    ]);
    common::assert_success(&out);
    objects.sort();
    (r, digest, objects)
}

fn verify_codes(root: &Path, digest: &Digest) -> (bool, Vec<(String, String)>, serde_json::Value) {
    let out = sealctl(&[
        "verify",
        "--json",
        "--repo",
        root.to_str().unwrap(),
        "--key",
        &key("sealroot-test.pub.pem"),
        &digest.to_hex(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = common::problems(&v);
    (out.status.success(), problems, v)
}

#[test]
fn referenced_objects_are_the_ones_written() {
    let dir = tempfile::tempdir().unwrap();
    let (r, digest, objects) = real_repo(dir.path(), 7);
    let image = fs::read(r.image_path(&digest)).unwrap();
    assert_eq!(
        sealroot::image::repo::image_objects(&r.image_path(&digest), &image).unwrap(),
        objects
    );
}

#[test]
fn verify_names_object_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (r, digest, objects) = real_repo(dir.path(), 6);
    let (ok, problems, v) = verify_codes(dir.path(), &digest);
    assert!(ok, "{problems:?}");
    assert_eq!(v["objects"], 6);
    assert_eq!(
        v["seal"]["key"].as_str().unwrap(),
        sealroot::keys::fingerprint(
            &sealroot::keys::load_public_key(Path::new(&key("sealroot-test.pub.pem"))).unwrap()
        )
    );

    let flipped = r.object_path(&objects[2]);
    let mut data = fs::read(&flipped).unwrap();
    data[64] ^= 0x10;
    fs::write(&flipped, &data).unwrap();
    let gone = r.object_path(&objects[4]);
    fs::remove_file(&gone).unwrap();
    let (ok, problems, _) = verify_codes(dir.path(), &digest);
    assert!(!ok);
    assert_eq!(
        problems,
        vec![
            (
                "object-digest-mismatch".to_string(),
                flipped.display().to_string()
            ),
            ("object-missing".to_string(), gone.display().to_string()),
        ]
    );
    // Text output: one line per problem, path first.
    let out = sealctl(&[
        "verify",
        "--repo",
        dir.path().to_str().unwrap(),
        "--key",
        &key("sealroot-test.pub.pem"),
        &digest.to_hex(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}: object content has digest", flipped.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}: object {} missing",
            gone.display(),
            objects[4].to_hex()
        )),
        "{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sealctl verify: 2 problem(s)\n"
    );
}

#[test]
fn install_copies_then_refuses_without_verity() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (_, digest, objects) = real_repo(src.path(), 5);
    let args = [
        "install",
        "--repo",
        src.path().to_str().unwrap(),
        "--sysroot",
        dst.path().to_str().unwrap(),
    ];
    let mut full = args.to_vec();
    let hex = digest.to_hex();
    full.push(&hex);
    let out = sealctl(&full);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "sealctl install: the kernel/filesystem at {} does not support fs-verity (ext4 needs -O verity and 4096-byte blocks)",
            dst.path().display()
        )),
        "{err}"
    );
    // The copy phase completed and checks out offline.
    let (ok, problems, v) = verify_codes(dst.path(), &digest);
    assert!(ok, "{problems:?}");
    assert_eq!(v["objects"], objects.len());
    let t = Repo::new(dst.path());
    for sub in ["etc/upper", "etc/work", "var"] {
        assert!(t.deploy_dir(&digest).join(sub).is_dir());
    }
    // --copy-only succeeds and is idempotent.
    let mut copy_only = args.to_vec();
    copy_only.push("--copy-only");
    copy_only.push(&hex);
    let out = sealctl(&copy_only);
    common::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 objects, 0 copied"));
    // Bad inputs.
    for (digest_arg, want) in [
        ("ab".repeat(32), "image not found"),
        ("xyz".to_string(), "\"xyz\" is not a digest"),
    ] {
        let mut a = args.to_vec();
        a.push(&digest_arg);
        let out = sealctl(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.starts_with("sealctl install: ") && err.contains(want),
            "{err}"
        );
    }
}

/// `sealctl install --copy-only` of image `hex` from `src` into `sysroot`.
fn copy_only_args<'a>(src: &'a Path, sysroot: &'a Path, hex: &'a str) -> [&'a str; 7] {
    [
        "install",
        "--copy-only",
        "--repo",
        src.to_str().unwrap(),
        "--sysroot",
        sysroot.to_str().unwrap(),
        hex,
    ]
}

#[test]
fn sealctl_install_survives_sigkill() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (_, digest, objects) = real_repo(src.path(), 50);
    let t = Repo::new(dst.path());
    let mut rng = common::Rng::seeded(0x0012_7a12);
    let hex = digest.to_hex();
    // Time one complete install so the kills spread over a whole run.
    let timing = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let out = sealctl(&copy_only_args(src.path(), timing.path(), &hex));
    assert!(out.status.success());
    let span = (t0.elapsed().as_micros() as u64).max(1000);
    let (rounds, mut round, mut midway) = (30, 0, 0);
    while common::more_kill_rounds(round, rounds, midway) {
        round += 1;
        let seed = rng.step();
        let child = common::spawn_sealctl_quiet(&copy_only_args(src.path(), dst.path(), &hex));
        let done = common::kill_after(child, seed % span);
        // Nothing under a digest name has other content.
        let present = if t.objects_dir().exists() {
            common::objects_named_by_content(&t, HashAlgorithm::Sha256)
        } else {
            0
        };
        if t.image_path(&digest).exists() {
            assert_eq!(
                fsverity::digest_bytes(
                    HashAlgorithm::Sha256,
                    &fs::read(t.image_path(&digest)).unwrap()
                ),
                digest
            );
            // The image is an object too, published before its link.
            assert_eq!(
                present,
                objects.len() + 1,
                "image visible before all its objects"
            );
        }
        if !done && present < objects.len() {
            midway += 1;
        }
        if seed % 2 == 0 {
            fs::remove_dir_all(dst.path()).unwrap();
            fs::create_dir_all(dst.path()).unwrap();
        }
    }
    let out = sealctl(&copy_only_args(src.path(), dst.path(), &hex));
    common::assert_success(&out);
    let (ok, problems, _) = verify_codes(dst.path(), &digest);
    assert!(ok, "{problems:?}");
    eprintln!("{midway} of {round} kills landed mid-copy");
    assert!(
        midway > 0,
        "no kill landed during the copy; the test proved nothing"
    );
}
