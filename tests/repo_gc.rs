//! `sealctl gc` end to end, on repositories made by `sealctl build`:
//! images sharing objects, one or more dropped; the removed set and the
//! figures checked against what the test computes on its own; `--dry-run`
//! touching nothing; `--keep`; refusals that change nothing; and SIGKILL at
//! random moments, after which every kept image still verifies and a rerun
//! ends with exactly the files an uninterrupted run leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{assert_success, key, sealctl};

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::fsverity;
use sealroot::image::repo::Repo;

/// Contents of a file: deterministic bytes from a label.
fn content(label: &str, len: usize) -> Vec<u8> {
    let seed = label
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(seed | 1) >> 3) as u8)
        .collect()
}

/// Write a root tree: `shared` files every tree has, `own` files only this
/// one has (each over 64 bytes, so each is an object), one inline file.
/// Returns the object digests its files give.
fn make_tree(root: &Path, name: &str, shared: usize, own: usize) -> BTreeSet<Digest> {
    let mut digests = BTreeSet::new();
    fs::create_dir_all(root.join("usr/share")).unwrap();
    fs::create_dir_all(root.join("usr/own")).unwrap();
    fs::write(root.join("etc-hostname"), name.as_bytes()).unwrap();
    let mut put = |path: PathBuf, data: Vec<u8>| {
        digests.insert(fsverity::digest_bytes(HashAlgorithm::Sha256, &data));
        fs::write(path, data).unwrap();
    };
    for i in 0..shared {
        put(
            root.join(format!("usr/share/s{i}")),
            content(&format!("shared-{i}"), 65 + i * 331 % 9000),
        );
    }
    for i in 0..own {
        put(
            root.join(format!("usr/own/f{i}")),
            content(&format!("{name}-{i}"), 65 + i * 97 % 3000),
        );
    }
    digests
}

/// `sealctl build`, optionally sealed; the image digest.
fn build(root: &Path, repo: &Path, sign: bool) -> Digest {
    let mut args = vec![
        "build",
        root.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ];
    let k = key("sealroot-test.pem");
    if sign {
        args.extend_from_slice(&["--sign", &k, "--serial", "3"]);
    }
    let out = sealctl(&args);
    assert_success(&out);
    Digest::parse_hex_any(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    /// (image digest, its file objects), in build order.
    images: Vec<(Digest, BTreeSet<Digest>)>,
}

/// Three images sharing `shared` objects, each with `own` objects of its
/// own: A and B sealed, C not; a state directory for A and for C.
fn fixture(shared: usize, own: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut images = Vec::new();
    for (name, sign) in [("a", true), ("b", true), ("c", false)] {
        let root = dir.path().join(format!("root-{name}"));
        let objects = make_tree(&root, name, shared, own);
        let d = build(&root, &repo, sign);
        images.push((d, objects));
    }
    let r = Repo::new(&repo);
    for i in [0, 2] {
        let deploy = r.deploy_dir(&images[i].0);
        for sub in ["etc/upper", "etc/work", "var/lib"] {
            fs::create_dir_all(deploy.join(sub)).unwrap();
        }
        fs::write(deploy.join("etc/upper/hostname"), b"local state\n").unwrap();
        fs::write(deploy.join("var/lib/data"), vec![9u8; 5000]).unwrap();
    }
    Fixture {
        _dir: dir,
        repo,
        images,
    }
}

/// Everything under `root`: relative path → (kind, size, content hash or
/// link target). Symlinks are not followed.
fn listing(root: &Path) -> BTreeMap<PathBuf, (char, u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = p.symlink_metadata().unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let entry = if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            ('d', 0, String::new())
        } else if m.is_symlink() {
            let t = fs::read_link(&p).unwrap();
            ('l', m.size(), t.display().to_string())
        } else {
            let d = fsverity::digest_bytes(HashAlgorithm::Sha256, &fs::read(&p).unwrap());
            ('f', m.size(), d.to_hex())
        };
        out.insert(rel, entry);
    }
    out
}

/// (non-directory entries, bytes of regular files) in `before` but not in
/// `after`: the figures gc must report, computed independently.
fn removed_figures(
    before: &BTreeMap<PathBuf, (char, u64, String)>,
    after: &BTreeMap<PathBuf, (char, u64, String)>,
) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for (path, (kind, size, _)) in before {
        if after.contains_key(path) || *kind == 'd' {
            continue;
        }
        files += 1;
        if *kind == 'f' {
            bytes += size;
        }
    }
    (files, bytes)
}

fn gc(repo: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["gc", "--repo", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    sealctl(&args)
}

/// The four figures of a summary line, in order: kept, dropped, files, bytes.
fn figures(out: &Output) -> [u64; 4] {
    assert_success(out);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let nums: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 4, "summary: {text:?}");
    [nums[0], nums[1], nums[2], nums[3]]
}

/// `sealctl verify --key` passes for `digest`.
#[track_caller]
fn assert_verifies(repo: &Path, digest: &Digest) {
    let out = sealctl(&[
        "verify",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        &key("sealroot-test.pub.pem"),
        &digest.to_hex(),
    ]);
    assert!(
        out.status.success(),
        "image {} does not verify:\n{}",
        digest.to_hex(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The object file names of `digests` (relative to the repository).
fn object_rels(r: &Repo, digests: &BTreeSet<Digest>) -> BTreeSet<PathBuf> {
    digests
        .iter()
        .map(|d| {
            r.object_path(d)
                .strip_prefix(r.root())
                .unwrap()
                .to_path_buf()
        })
        .collect()
}

fn rel(r: &Repo, p: PathBuf) -> PathBuf {
    p.strip_prefix(r.root()).unwrap().to_path_buf()
}

#[test]
fn default_gc_drops_the_unsealed_image_and_only_its_objects() {
    let fx = fixture(12, 10);
    let r = Repo::new(&fx.repo);
    let [(a, a_obj), (b, b_obj), (c, c_obj)] = [0, 1, 2].map(|i| fx.images[i].clone());
    // Leftovers of killed writers: a store batch and a repository temp.
    let batch = r.objects_dir().join(".tmp/2147483647-0");
    fs::create_dir_all(&batch).unwrap();
    fs::write(batch.join("0"), vec![1u8; 777]).unwrap();
    let temp = r.images_dir().join(".tmp-sealctl-999999999-0");
    fs::write(&temp, b"half a link").unwrap();

    let before = listing(&fx.repo);
    let dry = gc(&fx.repo, &["--dry-run"]);
    let dry_figures = figures(&dry);
    assert!(String::from_utf8_lossy(&dry.stdout).starts_with("dry run: would keep"));
    assert_eq!(
        listing(&fx.repo),
        before,
        "--dry-run changed the repository"
    );

    let out = gc(&fx.repo, &[]);
    let real = figures(&out);
    let after = listing(&fx.repo);
    let (files, bytes) = removed_figures(&before, &after);
    assert_eq!(
        real,
        [2, 1, files, bytes],
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(dry_figures, real, "--dry-run reports what the run does");

    // Exactly what only C used is gone: its objects, its image (an object
    // too), its link and its state; the store and repository temporaries.
    let mut c_only: BTreeSet<Digest> = c_obj.difference(&a_obj).copied().collect();
    c_only = c_only.difference(&b_obj).copied().collect();
    assert!(
        c_only.len() >= 10 && c_obj.len() > c_only.len(),
        "fixture shares objects"
    );
    c_only.insert(c);
    let gone: BTreeSet<PathBuf> = before
        .iter()
        .filter(|(p, (k, _, _))| *k != 'd' && !after.contains_key(*p))
        .map(|(p, _)| p.clone())
        .collect();
    let mut expected = object_rels(&r, &c_only);
    expected.insert(rel(&r, r.image_path(&c)));
    expected.insert(rel(&r, r.deploy_dir(&c).join("etc/upper/hostname")));
    expected.insert(rel(&r, r.deploy_dir(&c).join("var/lib/data")));
    expected.insert(rel(&r, batch.join("0")));
    expected.insert(rel(&r, temp));
    assert_eq!(gone, expected);
    assert!(!r.deploy_dir(&c).exists());
    assert!(
        r.deploy_dir(&a).join("var/lib/data").is_file(),
        "kept state stays"
    );
    assert!(!r.objects_dir().join(".tmp").exists());
    // Nothing was added, and the kept images verify.
    assert!(after.keys().all(|p| before.contains_key(p)));
    for d in [a, b] {
        assert_verifies(&fx.repo, &d);
    }
    // A second run finds nothing.
    assert_eq!(figures(&gc(&fx.repo, &[])), [2, 0, 0, 0]);
    assert_eq!(listing(&fx.repo), after);
}

#[test]
fn keep_subset_drops_sealed_images_too() {
    let fx = fixture(8, 6);
    let r = Repo::new(&fx.repo);
    let [(a, a_obj), (b, b_obj), (c, _)] = [0, 1, 2].map(|i| fx.images[i].clone());
    let before = listing(&fx.repo);
    // Every digest form of the user grammar is accepted.
    let keep = format!("v1-sha256-12:{}", a.to_hex());
    let dry = figures(&gc(&fx.repo, &["--dry-run", "--keep", &keep]));
    assert_eq!(listing(&fx.repo), before);
    let real = figures(&gc(&fx.repo, &["--keep", &keep]));
    let after = listing(&fx.repo);
    let (files, bytes) = removed_figures(&before, &after);
    assert_eq!(real, [1, 2, files, bytes]);
    assert_eq!(dry, real);
    assert_verifies(&fx.repo, &a);
    for d in [b, c] {
        assert!(r.image_path(&d).symlink_metadata().is_err());
        assert!(!r.object_path(&d).exists());
    }
    let (json, sig) = r.seal_paths(&b);
    assert!(!json.exists() && !sig.exists(), "B's seal removed");
    assert!(r.seal_paths(&a).0.exists());
    for o in b_obj.difference(&a_obj) {
        assert!(!r.object_path(o).exists());
    }
    for o in &a_obj {
        assert!(r.object_path(o).is_file());
    }
}

#[test]
fn refusals_change_nothing() {
    let fx = fixture(4, 4);
    let r = Repo::new(&fx.repo);
    let a = fx.images[0].0;
    let before = listing(&fx.repo);
    let refused = |args: &[&str], needle: &str| {
        let out = gc(&fx.repo, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.starts_with("sealctl gc: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(listing(&fx.repo), before, "{args:?} changed the repository");
    };
    // --keep naming an image that is not there, or no digest at all.
    let unknown = fsverity::digest_bytes(HashAlgorithm::Sha256, b"no such image");
    refused(&["--keep", &a.to_hex(), &unknown.to_hex()], "no such image");
    refused(&["--keep", "sha256:abc"], "is not a digest");
    let sha512 = fsverity::digest_bytes(HashAlgorithm::Sha512, b"x");
    refused(&["--keep", &sha512.to_hex()], "no such image");

    // A kept image whose bytes are damaged: its objects cannot be listed.
    let image = r.object_path(&a);
    let good = fs::read(&image).unwrap();
    let mut bad = good.clone();
    bad[1100] ^= 1;
    fs::write(&image, &bad).unwrap();
    let damaged = listing(&fx.repo);
    let out = gc(&fx.repo, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("kept image {}", a.to_hex())), "{err}");
    assert!(err.contains("nothing removed"), "{err}");
    assert_eq!(listing(&fx.repo), damaged);
    fs::write(&image, &good).unwrap();
    assert_eq!(listing(&fx.repo), before);
    // An image that has its digest but is not EROFS at all.
    let fake = b"stand-in, not EROFS".repeat(300);
    let fd = fsverity::digest_bytes(HashAlgorithm::Sha256, &fake);
    let obj = r.object_path(&fd);
    fs::create_dir_all(obj.parent().unwrap()).unwrap();
    fs::write(&obj, &fake).unwrap();
    std::os::unix::fs::symlink(
        sealroot::image::repo::image_link_target(&fd),
        r.image_path(&fd),
    )
    .unwrap();
    let with_fake = listing(&fx.repo);
    let out = gc(&fx.repo, &["--keep", &fd.to_hex()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a readable composefs image"), "{err}");
    assert_eq!(listing(&fx.repo), with_fake);
    fs::remove_file(r.image_path(&fd)).unwrap();
    fs::remove_file(&obj).unwrap();
    let _ = fs::remove_dir(obj.parent().unwrap());
    assert_eq!(listing(&fx.repo), before);

    // A seal whose image is not there: a kept image that cannot be read.
    let orphan = fsverity::digest_bytes(HashAlgorithm::Sha256, b"sealed, then lost");
    let (json, sig) = r.seal_paths(&orphan);
    let (aj, asig) = r.seal_paths(&a);
    fs::copy(aj, &json).unwrap();
    fs::copy(asig, &sig).unwrap();
    let orphaned = listing(&fx.repo);
    let out = gc(&fx.repo, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kept image {}", orphan.to_hex())),
        "{err}"
    );
    assert!(err.contains("image not found"), "{err}");
    assert_eq!(listing(&fx.repo), orphaned);
    fs::remove_file(json).unwrap();
    fs::remove_file(sig).unwrap();
    assert_eq!(listing(&fx.repo), before);

    // meta.json missing, or naming a newer format.
    let meta = fs::read(r.meta_path()).unwrap();
    fs::remove_file(r.meta_path()).unwrap();
    let without = listing(&fx.repo);
    let out = gc(&fx.repo, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upgrade-repo"));
    assert_eq!(listing(&fx.repo), without);
    fs::write(
        r.meta_path(),
        br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#,
    )
    .unwrap();
    let newer = listing(&fx.repo);
    let out = gc(&fx.repo, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("format version 2"));
    assert_eq!(listing(&fx.repo), newer);
    fs::write(r.meta_path(), meta).unwrap();
    assert_eq!(listing(&fx.repo), before);

    // No repository at all.
    let out = gc(&fx.repo.join("nowhere"), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such repository"));
    // And with everything restored, gc runs.
    assert_eq!(figures(&gc(&fx.repo, &[]))[..2], [2, 1]);
}

/// `cp -a`: a byte-for-byte copy with symlinks kept as links.
fn copy_repo(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(st.unwrap().success(), "cp -a failed");
}

/// Every image that has both seal files (what the default gc keeps).
fn sealed_images(r: &Repo) -> Vec<Digest> {
    let mut out = Vec::new();
    for e in fs::read_dir(r.seals_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(hex) = name.strip_suffix(".json") {
            let d = Digest::parse_hex(HashAlgorithm::Sha256, hex).unwrap();
            if r.seal_paths(&d).1.exists() {
                out.push(d);
            }
        }
    }
    out
}

#[test]
fn gc_survives_sigkill_and_a_rerun_finishes_the_job() {
    // Four sealed images; gc keeps two (few objects: verified after every
    // kill) and drops two sealed ones with many objects. After any kill,
    // every image that still has a seal must verify: a dropped image may
    // lose its objects only once its seal is gone.
    let has_cp = Command::new("cp")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cp {
        common::missing("cp (coreutils), which copies the repository for each round");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut kept = Vec::new();
    for name in ["a", "b"] {
        let root = dir.path().join(format!("root-{name}"));
        make_tree(&root, name, 6, 4);
        kept.push(build(&root, &repo, true));
    }
    for name in ["old1", "old2"] {
        let root = dir.path().join(format!("root-{name}"));
        make_tree(&root, name, 6, 1200);
        build(&root, &repo, true);
    }
    let r = Repo::new(&repo);
    for d in sealed_images(&r) {
        fs::create_dir_all(r.deploy_dir(&d).join("var")).unwrap();
    }
    assert_eq!(sealed_images(&r).len(), 4);
    let original = listing(&repo);
    let keep_args: Vec<String> = kept
        .iter()
        .flat_map(|d| ["--keep".to_string(), d.to_hex()])
        .collect();
    let keep_args: Vec<&str> = keep_args.iter().map(String::as_str).collect();

    // The uninterrupted result, and how long a whole run takes.
    let reference_dir = dir.path().join("reference");
    copy_repo(&repo, &reference_dir);
    let t0 = std::time::Instant::now();
    let full = figures(&gc(&reference_dir, &keep_args));
    let span = (t0.elapsed().as_micros() as u64).max(2000);
    let reference = listing(&reference_dir);
    assert_eq!(full[..2], [2, 2]);
    assert!(full[2] > 2400, "{full:?}");

    let work = dir.path().join("work");
    copy_repo(&repo, &work);
    let w = Repo::new(&work);
    let mut rng = common::Rng::seeded(0x0006_c0de);
    let (rounds, mut round, mut midway) = (24, 0, 0);
    while common::more_kill_rounds(round, rounds, midway) {
        let child = common::sealctl_cmd()
            .args(["gc", "--repo", work.to_str().unwrap()])
            .args(&keep_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let finished = common::kill_after(child, rng.next(span));
        let now = listing(&work);
        if !finished && now != reference && now != original {
            midway += 1;
        }
        // Nothing was ever added; every kept and every still-sealed image
        // verifies.
        assert!(
            now.keys().all(|p| original.contains_key(p)),
            "round {round}"
        );
        let sealed = sealed_images(&w);
        assert!(kept.iter().all(|d| sealed.contains(d)));
        for d in &sealed {
            assert_verifies(&work, d);
        }
        // Half the time, and after the last round: a rerun finishes the job
        // exactly, then start over from a fresh copy; otherwise kill again
        // where this one stopped.
        let last = !common::more_kill_rounds(round + 1, rounds, midway);
        if rng.next(2) == 0 || last {
            assert_success(&gc(&work, &keep_args));
            assert_eq!(listing(&work), reference, "round {round}: rerun differs");
            copy_repo(&repo, &work);
        }
        round += 1;
    }
    // Default gc after a --keep run keeps exactly what is left.
    assert_eq!(figures(&gc(&reference_dir, &[])), [2, 0, 0, 0]);
    for d in &kept {
        assert_verifies(&reference_dir, d);
    }
    eprintln!("{midway} of {round} kills landed mid-collection (a run takes {span} µs)");
    assert!(
        midway > 0,
        "no kill landed during a collection; the test proved nothing"
    );
}
