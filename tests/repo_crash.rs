//! SIGKILL at random moments during install's copy phase (and, when the
//! builder is present, during `sealctl build`): the target never holds a
//! file under a digest name with other content, and a rerun completes.
//!
//! The install child is this test binary re-run with an environment
//! variable naming the repositories; the parent kills it with SIGKILL after
//! a random delay, checks the target, and repeats.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::progress::Progress;
use sealroot::image::repo::{self, InstallOptions, Repo};

const CHILD_ENV: &str = "SEALROOT_CRASH_CHILD";

fn make_source(dir: &Path) -> (Vec<Digest>, Digest) {
    let r = Repo::new(dir);
    let mut objects = Vec::new();
    for i in 0..60usize {
        let len = 100 + (i * 37_411) % 600_000;
        let data: Vec<u8> = (0..len).map(|j| ((j ^ (i * 131)) % 251) as u8).collect();
        let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &data);
        let p = r.object_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        objects.push(d);
    }
    let image = b"fake image bytes".repeat(1000);
    let digest = fsverity::digest_bytes(HashAlgorithm::Sha256, &image);
    fs::create_dir_all(r.images_dir()).unwrap();
    fs::write(r.image_path(&digest), image).unwrap();
    (objects, digest)
}

/// The objects of the source repository, found by listing it.
fn list_objects(r: &Repo) -> Vec<Digest> {
    let mut out = Vec::new();
    for sub in fs::read_dir(r.objects_dir()).unwrap() {
        let sub = sub.unwrap();
        if !sub.file_type().unwrap().is_dir() {
            continue;
        }
        let a = sub.file_name().into_string().unwrap();
        for f in fs::read_dir(sub.path()).unwrap() {
            let b = f.unwrap().file_name().into_string().unwrap();
            out.push(Digest::parse_hex(HashAlgorithm::Sha256, &format!("{a}{b}")).unwrap());
        }
    }
    out.sort();
    out
}

/// No file anywhere under `objects/` is visible under a digest name with
/// other content; temp files (dot-prefixed) may exist only at the top.
fn check_target(t: &Repo) -> usize {
    let mut good = 0;
    let Ok(top) = fs::read_dir(t.objects_dir()) else {
        return 0;
    };
    for sub in top {
        let sub = sub.unwrap();
        let name = sub.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        assert!(sub.file_type().unwrap().is_dir(), "unexpected {name}");
        for f in fs::read_dir(sub.path()).unwrap() {
            let f = f.unwrap();
            let fname = f.file_name().into_string().unwrap();
            assert!(!fname.starts_with('.'), "temp inside {name}/: {fname}");
            let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &fs::read(f.path()).unwrap());
            assert_eq!(
                sealroot::layout::object_name(&d),
                format!("{name}/{fname}"),
                "wrong content under a digest name"
            );
            good += 1;
        }
    }
    if let Ok(img_dir) = fs::read_dir(t.images_dir()) {
        for f in img_dir {
            let f = f.unwrap();
            let fname = f.file_name().into_string().unwrap();
            if fname.starts_with('.') {
                continue;
            }
            let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &fs::read(f.path()).unwrap());
            assert_eq!(d.to_hex(), fname, "wrong image content under its name");
        }
    }
    good
}

/// The copy phase of an install of `digest` from `s` to `t`, in process.
fn install_copy_only(s: &Repo, t: &Repo, digest: &Digest, objects: &[Digest]) {
    let image = fs::read(s.image_path(digest)).unwrap();
    repo::install_with_objects(
        s,
        t,
        digest,
        &image,
        objects,
        InstallOptions { copy_only: true },
        &Progress::hidden(),
    )
    .unwrap();
}

fn child_paths() -> Option<(PathBuf, PathBuf, String)> {
    let v = std::env::var(CHILD_ENV).ok()?;
    let mut it = v.split('\n');
    Some((it.next()?.into(), it.next()?.into(), it.next()?.to_string()))
}

/// Run only as the child of `install_copy_phase_survives_sigkill`.
#[test]
#[ignore = "child process of install_copy_phase_survives_sigkill"]
fn crash_child_install() {
    let Some((src, dst, hex)) = child_paths() else {
        return;
    };
    let s = Repo::new(src);
    let digest = Digest::parse_hex(HashAlgorithm::Sha256, &hex).unwrap();
    let objects = list_objects(&s);
    install_copy_only(&s, &Repo::new(dst), &digest, &objects);
}

#[test]
fn install_copy_phase_survives_sigkill() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (objects, digest) = make_source(src.path());
    let t = Repo::new(dst.path());
    let mut rng = common::Rng::seeded(0x0012_7a11);
    let exe = std::env::current_exe().unwrap();
    let spawn_child = |dst: &Path| {
        Command::new(&exe)
            .args([
                "--exact",
                "crash_child_install",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!(
                    "{}\n{}\n{}",
                    src.path().display(),
                    dst.display(),
                    digest.to_hex()
                ),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Time one complete child run so the kills spread over a whole run.
    let timing = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    assert!(spawn_child(timing.path()).wait().unwrap().success());
    let span = (t0.elapsed().as_micros() as u64).max(1000);
    let (rounds, mut round, mut killed_midway) = (25, 0, 0);
    while common::more_kill_rounds(round, rounds, killed_midway) {
        round += 1;
        let finished = common::kill_after(spawn_child(dst.path()), rng.next(span));
        let present = check_target(&t);
        if !finished && present < objects.len() {
            killed_midway += 1;
        }
        // Start over now and then so kills land in early phases again.
        if rng.next(2) == 0 {
            fs::remove_dir_all(dst.path()).unwrap();
            fs::create_dir_all(dst.path()).unwrap();
        }
    }
    // The rerun completes and cleans up.
    install_copy_only(&Repo::new(src.path()), &t, &digest, &objects);
    // Every object, and the image, which is stored as an object too.
    assert_eq!(check_target(&t), objects.len() + 1);
    assert!(t.image_path(&digest).is_file());
    // Temporaries live under objects/.tmp/ (the store's) while a run is
    // going; after a completed run nothing is left, not even that directory.
    let temps: Vec<_> = fs::read_dir(t.objects_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "stale temps left: {temps:?}");
    assert!(t.deploy_dir(&digest).join("etc/work").is_dir());
    eprintln!("{killed_midway} of {round} kills landed mid-copy");
    assert!(
        killed_midway > 0,
        "no kill landed during the copy; the test proved nothing"
    );
}
