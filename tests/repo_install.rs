//! Install's copy phase and its refusal on a kernel without fs-verity,
//! and offline object checks, driven through the library with an explicit
//! object list (independent of the EROFS reader).

use std::fs;
use std::path::Path;

mod common;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::progress::Progress;
use sealroot::image::repo::{self, InstallOptions, ProblemKind, Repo, RepoError, VerifyReport};

/// A source repository with `n` objects of assorted sizes and a fake image.
fn source(dir: &Path, n: usize) -> (Repo, Vec<Digest>, Vec<u8>, Digest) {
    let r = Repo::new(dir);
    let mut objects = Vec::new();
    for i in 0..n {
        let len = [65usize, 4096, 4097, 70_000, 1 << 20][i % 5] + i;
        let data: Vec<u8> = (0..len).map(|j| ((j * 31 + i * 7) % 253) as u8).collect();
        let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &data);
        let p = r.object_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &data).unwrap();
        objects.push(d);
    }
    let image: Vec<u8> = b"not really erofs, but named by its digest".repeat(100);
    let digest = fsverity::digest_bytes(HashAlgorithm::Sha256, &image);
    fs::create_dir_all(r.images_dir()).unwrap();
    fs::write(r.image_path(&digest), &image).unwrap();
    let key = sealroot::keys::load_private_key(&common::test_keys_dir().join("sealroot-test.pem"))
        .unwrap();
    let mut m = sealroot::seal::Manifest::new(digest);
    m.serial = 3;
    repo::sign_image(&r, &key, &m).unwrap();
    (r, objects, image, digest)
}

/// Every file under objects/ is named by the digest of its content, and no
/// temp file is left.
fn assert_objects_named_by_content(r: &Repo) {
    for sub in fs::read_dir(r.objects_dir()).unwrap() {
        let sub = sub.unwrap();
        let name = sub.file_name().into_string().unwrap();
        if name.starts_with('.') {
            // The store's temp directory may remain, but empty.
            assert!(sub.path().is_dir(), "stray temp {name}");
            assert!(
                fs::read_dir(sub.path()).unwrap().next().is_none(),
                "stray temps in {name}"
            );
            continue;
        }
        if !sub.file_type().unwrap().is_dir() {
            continue;
        }
        for f in fs::read_dir(sub.path()).unwrap() {
            let f = f.unwrap();
            let fname = f.file_name().into_string().unwrap();
            let content = fs::read(f.path()).unwrap();
            let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &content);
            assert_eq!(
                format!("{name}/{fname}"),
                sealroot::layout::object_name(&d),
                "{:?}",
                f.path()
            );
        }
    }
}

#[test]
fn copy_phase_is_complete_and_idempotent() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (s, objects, image, digest) = source(src.path(), 12);
    let t = Repo::new(dst.path());
    let opts = InstallOptions { copy_only: true };
    let r =
        repo::install_with_objects(&s, &t, &digest, &image, &objects, opts, &Progress::hidden())
            .unwrap();
    assert_eq!((r.objects, r.objects_copied), (12, 12));
    assert!(r.seal_installed && !r.verity_enabled);
    for d in &objects {
        assert_eq!(
            fs::read(t.object_path(d)).unwrap(),
            fs::read(s.object_path(d)).unwrap()
        );
    }
    assert_eq!(fs::read(t.image_path(&digest)).unwrap(), image);
    let (sj, ss) = s.seal_paths(&digest);
    let (tj, ts) = t.seal_paths(&digest);
    assert_eq!(fs::read(sj).unwrap(), fs::read(tj).unwrap());
    assert_eq!(fs::read(ss).unwrap(), fs::read(ts).unwrap());
    for sub in ["etc/upper", "etc/work", "var"] {
        assert!(t.deploy_dir(&digest).join(sub).is_dir(), "{sub}");
    }
    assert_objects_named_by_content(&t);
    let again =
        repo::install_with_objects(&s, &t, &digest, &image, &objects, opts, &Progress::hidden())
            .unwrap();
    assert_eq!(again.objects_copied, 0);
}

#[test]
fn host_without_verity_refuses_after_copy() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (s, objects, image, digest) = source(src.path(), 3);
    let t = Repo::new(dst.path());
    let err = repo::install_with_objects(
        &s,
        &t,
        &digest,
        &image,
        &objects,
        InstallOptions::default(),
        &Progress::hidden(),
    )
    .unwrap_err();
    match &err {
        RepoError::NoVeritySupport { target, .. } => assert_eq!(target, dst.path()),
        // A host whose kernel and filesystem do have fs-verity would get here:
        // then this test cannot show the refusal.
        other => panic!("expected NoVeritySupport, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "the kernel/filesystem at {} does not support fs-verity (ext4 needs -O verity and 4096-byte blocks)",
            dst.path().display()
        )),
        "{msg}"
    );
    // The copy phase had completed before the refusal.
    for d in &objects {
        assert!(t.object_path(d).is_file());
    }
    assert!(t.image_path(&digest).is_file());
}

#[test]
fn bad_source_objects_never_land_under_their_name() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (s, objects, image, digest) = source(src.path(), 4);
    // Corrupt one object in the source: same length, one byte flipped.
    let victim = objects[2];
    let p = s.object_path(&victim);
    let mut data = fs::read(&p).unwrap();
    data[100] ^= 1;
    fs::write(&p, &data).unwrap();
    let t = Repo::new(dst.path());
    let opts = InstallOptions { copy_only: true };
    let err =
        repo::install_with_objects(&s, &t, &digest, &image, &objects, opts, &Progress::hidden())
            .unwrap_err();
    assert!(
        matches!(&err, RepoError::ObjectDigestMismatch { path, expected, .. } if *path == p && **expected == victim),
        "{err}"
    );
    assert!(
        err.to_string().contains("object content has digest"),
        "{err}"
    );
    assert!(!t.object_path(&victim).exists());
    assert!(
        !t.image_path(&digest).exists(),
        "image published before its objects"
    );
    assert_objects_named_by_content(&t);

    // A missing source object is named.
    fs::remove_file(&p).unwrap();
    let err =
        repo::install_with_objects(&s, &t, &digest, &image, &objects, opts, &Progress::hidden())
            .unwrap_err();
    assert!(
        matches!(&err, RepoError::ObjectMissing { path, .. } if *path == p),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with(&format!("object {} missing", victim.to_hex())),
        "{err}"
    );
}

#[test]
fn verify_objects_names_each_problem() {
    let src = tempfile::tempdir().unwrap();
    let (s, objects, _, _) = source(src.path(), 5);
    let mut report = VerifyReport::default();
    repo::verify_objects(&s, &objects, &mut report, &Progress::hidden());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.objects, 5);

    let flipped = objects[1];
    let p = s.object_path(&flipped);
    let mut data = fs::read(&p).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x80;
    fs::write(&p, &data).unwrap();
    let missing = objects[3];
    fs::remove_file(s.object_path(&missing)).unwrap();
    let mut report = VerifyReport::default();
    repo::verify_objects(&s, &objects, &mut report, &Progress::hidden());
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(report.problems[0].path, p);
    assert!(matches!(
        report.problems[0].kind,
        ProblemKind::ObjectDigestMismatch { .. }
    ));
    assert_eq!(report.problems[0].kind.code(), "object-digest-mismatch");
    assert_eq!(report.problems[1].path, s.object_path(&missing));
    assert_eq!(report.problems[1].kind.code(), "object-missing");
}
