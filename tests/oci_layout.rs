//! OCI image layouts made by `umoci` from real directories: `sealctl oci
//! seal` must compute the digest that `sealctl build` computes for the same
//! image unpacked by `umoci unpack` (the oracle), and `sealctl pull` must
//! reproduce that image in a repository and refuse bad seals and bad blobs
//! leaving the repository as it was.
//!
//! The layout (all tags in one layout):
//! - `v1`: one gzip layer (`umoci repack`) with small and large files, a
//!   hard link, a symlink, a file with `security.capability` (setcap) and
//!   one with a `user.*` xattr, a character device, a fifo, a 120-byte
//!   directory name holding a 200-byte file name, set-id and odd modes,
//!   another owner.
//! - `v2`: a second `umoci repack` layer: a directory and a file deleted
//!   (whiteouts), a file changed, a directory replaced by a file and a file
//!   by a directory, a new directory.
//! - `v3`: a third layer written here with the `tar` crate and added with
//!   `umoci raw add-layer`: an opaque directory (`.wh..wh..opq`) with a new
//!   file, a hard link to a file of layer 1, an explicit whiteout.
//! - `v3z`: `v3` with its last layer stored as zstd instead (umoci 0.4
//!   cannot write zstd): the digest must equal `v3`'s.
//!
//! Both mtime policies are compared (as found, and `--use-epoch`).
//!
//! Needs root (device nodes, security.capability) and `umoci`, `setcap`,
//! `setfattr` (scripts/packages/oci.txt): missing is a failure under
//! `CI=true`, a printed SKIP otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{
    assert_success, key, listing, oci_seal, run, sealctl, text, umoci, verify_with_test_key,
    work_dir,
};
use sha2::{Digest as _, Sha256};

fn sh(script: &str) {
    run(Command::new("sh").args(["-euc", script]));
}

/// Whether everything this test needs is here (else SKIP / CI failure).
fn ready() -> bool {
    common::oci_ready(
        "device nodes and security.capability in layers",
        &["umoci", "setcap", "setfattr"],
    )
}

/// Build the layout with tags v1, v2, v3, v3z (module docs).
fn make_layout(w: &Path) {
    common::umoci_new_image(w, "v1", "B1");
    let long_dir = "d".repeat(120);
    let long_file = "f".repeat(200);
    sh(&format!(
        r#"cd {w}/B1/rootfs
mkdir -p etc/sub bin usr/share dev var/lib/x opt/old "{long_dir}"
echo hello > etc/hostname
echo deep > etc/sub/file
echo keep > etc/keep
head -c 70000 /dev/urandom > bin/tool
ln bin/tool bin/tool-hard
head -c 300 /dev/urandom > bin/ping
setcap cap_net_raw+ep bin/ping
setfattr -n user.note -v hello etc/hostname
ln -s ../etc/hostname bin/hn
mknod dev/null c 1 3
mkfifo dev/fifo
echo long > "{long_dir}/{long_file}"
printf 'exactly sixty-four bytes of data, inline in the image, no more.\n' > usr/share/sixty4
head -c 65 /dev/zero > usr/share/sixty5
echo x > usr/share/suid && chmod 4755 usr/share/suid
chmod 1777 var/lib/x
echo o > opt/old/o
echo plain > opt/file
chown 1000:1000 etc/keep
"#,
        w = w.display()
    ));
    umoci(w, &["repack", "--image", "L:v1", "B1"]);

    umoci(w, &["unpack", "--image", "L:v1", "B2"]);
    sh(&format!(
        r#"cd {w}/B2/rootfs
rm -rf etc/sub
rm bin/hn
echo changed > etc/hostname
rm -rf opt/old && echo now-a-file > opt/old
rm opt/file && mkdir opt/file && echo inside > opt/file/inner
mkdir -p srv/new && head -c 9000 /dev/urandom > srv/new/blob
"#,
        w = w.display()
    ));
    umoci(w, &["repack", "--image", "L:v2", "B2"]);

    // Layer 3, crafted: opaque dir, cross-layer hard link, whiteout.
    let tar = layer3();
    fs::write(w.join("layer3.tar"), &tar).unwrap();
    umoci(
        w,
        &[
            "raw",
            "add-layer",
            "--image",
            "L:v2",
            "--tag",
            "v3",
            "layer3.tar",
        ],
    );
    add_zstd_variant(&w.join("L"), "v3", "v3z", &tar);
}

fn layer3() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    entry("etc/", tar::EntryType::Directory, b"", None);
    entry("etc/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    entry("etc/only", tar::EntryType::Regular, b"only this\n", None);
    entry("usr/", tar::EntryType::Directory, b"", None);
    entry("usr/tool-link", tar::EntryType::Link, b"", Some("bin/tool"));
    entry("usr/share/.wh.sixty5", tar::EntryType::Regular, b"", None);
    b.into_inner().unwrap()
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// A copy of `layout` at `dest` (an earlier one replaced); returns `dest`.
fn copy_layout(layout: &Path, dest: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(dest);
    run(Command::new("cp").arg("-a").arg(layout).arg(dest));
    dest.to_path_buf()
}

fn manifest_of(layout: &Path, tag: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"));
    let digest = d["digest"].as_str().unwrap().to_owned();
    let m = serde_json::from_slice(&fs::read(blob_path(layout, &digest)).unwrap()).unwrap();
    (digest, m)
}

/// Tag `new` = `tag` with its last layer stored as zstd of `tar` (the
/// config's diff_ids name the uncompressed tar, so the config is unchanged).
fn add_zstd_variant(layout: &Path, tag: &str, new: &str, tar: &[u8]) {
    let (_, mut m) = manifest_of(layout, tag);
    let zst = zstd::encode_all(tar, 3).unwrap();
    let zd = sha256(&zst);
    fs::write(blob_path(layout, &zd), &zst).unwrap();
    let layers = m["layers"].as_array_mut().unwrap();
    let last = layers.last_mut().unwrap();
    last["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    last["digest"] = zd.into();
    last["size"] = zst.len().into();
    let bytes = serde_json::to_vec(&m).unwrap();
    let md = sha256(&bytes);
    fs::write(blob_path(layout, &md), &bytes).unwrap();
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": new},
        }));
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The oracle: `umoci unpack` then `sealctl build` of the rootfs.
fn oracle(w: &Path, tag: &str, epoch: bool) -> String {
    let bundle = format!("U-{tag}");
    let _ = fs::remove_dir_all(w.join(&bundle));
    umoci(w, &["unpack", "--image", &format!("L:{tag}"), &bundle]);
    let repo = w.join(format!("oracle-repo-{tag}"));
    let rootfs = w.join(&bundle).join("rootfs");
    let mut args = vec![
        "build",
        rootfs.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ];
    if epoch {
        args.push("--use-epoch");
    }
    let o = sealctl(&args);
    assert_success(&o);
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn pull(from: &str, repo: &Path, seal: Option<&Path>, extra: &[&str]) -> std::process::Output {
    let pub_key = key("sealroot-test.pub.pem");
    let mut args = vec![
        "pull",
        "--from",
        from,
        "--repo",
        repo.to_str().unwrap(),
        "--trusted-key",
        &pub_key,
    ];
    if let Some(s) = seal {
        args.push("--seal");
        args.push(s.to_str().unwrap());
    }
    args.extend_from_slice(extra);
    sealctl(&args)
}

#[test]
fn umoci_layouts_flatten_to_the_unpacked_trees_image() {
    if !ready() {
        return;
    }
    let w = work_dir("oci-layout-oracle");
    make_layout(&w);
    let layout = w.join("L");
    let k = key("sealroot-test.pem");
    let mut digests = BTreeMap::new();
    for tag in ["v1", "v2", "v3"] {
        for epoch in [false, true] {
            let extra: &[&str] = if epoch { &["--use-epoch"] } else { &[] };
            let image = format!("oci:{}:{tag}", layout.display());
            let (ours, _) = oci_seal(&image, &k, &w.join("seals"), extra);
            let theirs = oracle(&w, tag, epoch);
            assert_eq!(
                ours, theirs,
                "{tag} (use-epoch {epoch}): sealctl oci seal vs umoci unpack + sealctl build"
            );
            digests.insert((tag, epoch), ours);
        }
    }
    // The layers really changed the image, and zstd gives what gzip gives.
    assert_ne!(digests[&("v1", false)], digests[&("v2", false)]);
    assert_ne!(digests[&("v2", false)], digests[&("v3", false)]);
    let (z, _) = oci_seal(
        &format!("oci:{}:v3z", layout.display()),
        &k,
        &w.join("seals"),
        &[],
    );
    assert_eq!(z, digests[&("v3", false)], "zstd layer vs gzip layer");

    // What umoci made of layer 3 is what the flattening assumed.
    let u = w.join("U-v3/rootfs");
    assert!(u.join("etc/only").is_file() && !u.join("etc/keep").exists());
    assert!(!u.join("usr/share/sixty5").exists());
    assert!(u.join("usr/tool-link").is_file());
    let caps = Command::new("getcap")
        .arg(u.join("bin/ping"))
        .output()
        .unwrap();
    assert!(text(&caps).contains("cap_net_raw"), "{}", text(&caps));
}

#[test]
fn pull_reproduces_the_sealed_image_and_refuses_bad_cases() {
    if !ready() {
        return;
    }
    let w = work_dir("oci-layout-pull");
    make_layout(&w);
    let layout = w.join("L");
    let v2 = format!("oci:{}:v2", layout.display());
    let v3 = format!("oci:{}:v3", layout.display());
    let seals = w.join("seals");
    let good = key("sealroot-test.pem");
    let (d3, seal3) = oci_seal(&v3, &good, &seals, &[]);
    let (d2, seal2) = oci_seal(&v2, &good, &seals, &["--attach"]);

    // v2 with the seal found beside it in the layout.
    let repo = w.join("repo");
    let o = pull(&v2, &repo, None, &[]);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d2);
    assert_success(&verify_with_test_key(&repo, &d2));

    // The refusals, each leaving the repository as it was.
    let before = listing(&repo);
    let refuse = |what: &str, o: std::process::Output, needle: &str| {
        assert!(!o.status.success(), "{what}: accepted: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("sealctl pull: ") && err.contains(needle),
            "{what}: {err}"
        );
        assert_eq!(listing(&repo), before, "{what}: the repository changed");
    };
    // Signed by a key the puller does not trust.
    let (_, other_seal) = oci_seal(&v3, &key("other-test.pem"), &w.join("other"), &[]);
    refuse(
        "untrusted key",
        pull(&v3, &repo, Some(&other_seal), &[]),
        "untrusted key",
    );
    // A valid seal for another image (v2's seal offered for v3).
    refuse(
        "seal for another digest",
        pull(&v3, &repo, Some(&seal2), &[]),
        "but the seal is for",
    );
    // Below the floor.
    let (_, low) = oci_seal(&v3, &good, &w.join("low"), &["--serial", "1"]);
    refuse(
        "serial below floor",
        pull(&v3, &repo, Some(&low), &["--floor", "2"]),
        "below the minimum serial 2",
    );
    // No seal at all for v3 in the layout.
    refuse("no seal", pull(&v3, &repo, None, &[]), "no seal");

    // Bad blobs: a copy of the layout with v3's last layer corrupted
    // (same size, one byte flipped) and one with it truncated.
    let (_, m3) = manifest_of(&layout, "v3");
    let last = m3["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for (what, needle) in [("corrupt", "digest"), ("truncated", "bytes")] {
        let copy = copy_layout(&layout, &w.join(format!("L-{what}")));
        let blob = blob_path(&copy, &last);
        let mut data = fs::read(&blob).unwrap();
        if what == "corrupt" {
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        } else {
            data.truncate(data.len() - 7);
        }
        fs::File::create(&blob).unwrap().write_all(&data).unwrap();
        let from = format!("oci:{}:v3", copy.display());
        refuse(what, pull(&from, &repo, Some(&seal3), &[]), needle);
        // The seal is checked before any layer: an untrusted seal is
        // refused as such even though the layers are bad.
        refuse(
            "untrusted key before bad layers",
            pull(&from, &repo, Some(&other_seal), &[]),
            "untrusted key",
        );
    }

    // And the good pull of v3 into the same repository.
    let o = pull(&v3, &repo, Some(&seal3), &[]);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d3);
    assert!(repo.join("composefs/images").join(&d3).exists());
    assert!(repo
        .join("composefs/seals")
        .join(format!("{d3}.json"))
        .is_file());
    assert_success(&verify_with_test_key(&repo, &d3));
    // The pulled image is the oracle's image, byte for byte.
    let oracle_digest = oracle(&w, "v3", false);
    assert_eq!(oracle_digest, d3);

    // The layer cache: a fresh repository pulls v2; then v3 from a copy of
    // the layout that lacks v2's layer blobs still pulls (they are not
    // fetched: the cache replays them).
    let repo2 = w.join("repo2");
    let o = pull(&v2, &repo2, None, &[]);
    assert_success(&o);
    assert!(text(&o).contains("0 from the layer cache"), "{}", text(&o));
    let (_, m2) = manifest_of(&layout, "v2");
    let lower: Vec<String> = m2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    let bare = copy_layout(&layout, &w.join("L-bare"));
    for d in &lower {
        fs::remove_file(blob_path(&bare, d)).unwrap();
    }
    let bare_v3 = format!("oci:{}:v3", bare.display());
    let o = pull(&bare_v3, &repo2, Some(&seal3), &[]);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d3);
    assert!(text(&o).contains("2 from the layer cache"), "{}", text(&o));
    // Without the cache the missing blobs are needed, and missed.
    let o = pull(&bare_v3, &repo2, Some(&seal3), &["--no-layer-cache"]);
    assert!(
        !o.status.success() && text(&o).contains("missing"),
        "{}",
        text(&o)
    );

    // A damaged cache entry costs a retry that reads every layer, never a
    // wrong image: the zstd variant shares v3's first two layers. (The
    // damage must show in the image: the root's mode, say, is set again by
    // layer 2.)
    let cache_dir = repo2.join("oci-cache/layers");
    let first = cache_dir.join(format!(
        "{}.sha256.json",
        lower[0].strip_prefix("sha256:").unwrap()
    ));
    let entry = fs::read_to_string(&first).unwrap();
    // usr/share/suid (04755), which no later layer touches.
    assert!(entry.contains("\"perm\":2541"), "the set-uid file's entry");
    fs::write(&first, entry.replacen("\"perm\":2541", "\"perm\":493", 1)).unwrap();
    let v3z = format!("oci:{}:v3z", layout.display());
    let o = pull(&v3z, &repo2, Some(&seal3), &[]);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d3);
    assert!(!first.exists(), "the damaged entry was dropped");

    // gc prunes the layer cache: in a fresh repository holding v2 and v3,
    // `gc --keep` v3 removes the object of usr/share/sixty5 (65 bytes, not
    // inlined; v3 whites it out), so the entry of v1's layer, which names
    // it, can never be used again and goes; v2's layer entry stays usable.
    let repo3 = w.join("repo3");
    assert_success(&pull(&v2, &repo3, None, &[]));
    assert_success(&pull(&v3, &repo3, Some(&seal3), &[]));
    let entries = |repo: &Path| fs::read_dir(repo.join("oci-cache/layers")).unwrap().count();
    assert_eq!(entries(&repo3), 3, "one entry per layer of v3");
    let o = sealctl(&["gc", "--repo", repo3.to_str().unwrap(), "--keep", &d3]);
    assert_success(&o);
    assert!(
        text(&o).contains("layer cache: removed 1 entry naming removed objects, kept 2"),
        "{}",
        text(&o)
    );
    assert_eq!(entries(&repo3), 2);
    let v1_layer = cache_dir.join(format!(
        "{}.sha256.json",
        lower[0].strip_prefix("sha256:").unwrap()
    ));
    assert!(!repo3
        .join("oci-cache/layers")
        .join(v1_layer.file_name().unwrap())
        .exists());
    // v2 again: its second layer from the cache, the first fetched anew.
    let o = pull(&v2, &repo3, None, &[]);
    assert_success(&o);
    assert!(text(&o).contains("1 from the layer cache"), "{}", text(&o));
}

/// A pull SIGKILLed at scattered moments: each time, what the repository
/// shows is what it had before, plus at most the new image's objects, then
/// its image, then its seal (in that order: a visible seal always has its
/// image, a visible image all its objects); nothing that was there is
/// damaged; and a rerun completes.
#[test]
fn killed_pull_leaves_the_repository_usable_and_a_rerun_completes() {
    if !ready() {
        return;
    }
    let w = work_dir("oci-layout-kill");
    common::umoci_new_image(&w, "big", "B");
    sh(&format!(
        r#"cd {w}/B/rootfs
mkdir -p data
for i in $(seq 1 240); do head -c 131072 /dev/urandom > data/f$i; done
"#,
        w = w.display()
    ));
    umoci(&w, &["repack", "--image", "L:big", "B"]);
    let from = format!("oci:{}:big", w.join("L").display());
    let (digest, seal) = oci_seal(&from, &key("sealroot-test.pem"), &w.join("seals"), &[]);

    // The repository starts with another sealed image in it.
    let repo = w.join("repo");
    let base = w.join("base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("etc/os-release"), "ID=base\n".repeat(20)).unwrap();
    let o = sealctl(&[
        "build",
        base.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
        "--sign",
        &key("sealroot-test.pem"),
    ]);
    assert_success(&o);
    let base_digest = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let verify = |d: &str| verify_with_test_key(&repo, d);
    let pub_key = key("sealroot-test.pub.pem");
    let args = [
        "pull",
        "--from",
        &from,
        "--repo",
        repo.to_str().unwrap(),
        "--trusted-key",
        &pub_key,
        "--seal",
        seal.to_str().unwrap(),
    ];

    // How long a whole pull takes here (into a scratch repository).
    let scratch = w.join("scratch");
    let t0 = std::time::Instant::now();
    let mut scratch_args = args;
    let scratch_str = scratch.to_str().unwrap().to_owned();
    scratch_args[4] = &scratch_str;
    assert_success(&sealctl(&scratch_args));
    let full = t0.elapsed().as_micros() as u64;

    let mut rng = common::Rng::seeded(0x0c1);
    let (mut round, mut landed) = (0, 0);
    let image = repo.join("composefs/images").join(&digest);
    let seal_file = repo.join("composefs/seals").join(format!("{digest}.json"));
    while common::more_kill_rounds(round, 6, landed) {
        round += 1;
        let child = common::spawn_sealctl_quiet(&args);
        let finished = common::kill_after(child, 1 + rng.next(full.max(2)));
        if !finished {
            landed += 1;
        }
        assert_success(&verify(&base_digest));
        if seal_file.exists() {
            assert!(image.exists(), "round {round}: a seal without its image");
        }
        if image.exists() {
            // A visible image has all its objects (and its seal verifies,
            // if it is there yet).
            let o = verify(&digest);
            let report = text(&o);
            assert!(
                o.status.success() || (!seal_file.exists() && !report.contains("object")),
                "round {round}: {report}"
            );
        }
        // Start over from the repository without the new image, so the
        // next kill meets a pull with everything still to do.
        let _ = fs::remove_file(&seal_file);
        let _ = fs::remove_file(repo.join("composefs/seals").join(format!("{digest}.sig")));
        let _ = fs::remove_file(&image);
        let o = sealctl(&["gc", "--repo", repo.to_str().unwrap()]);
        assert_success(&o);
    }
    assert!(landed > 0, "no kill landed during a pull");
    let o = sealctl(&args);
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), digest);
    assert_success(&verify(&digest));
    assert_success(&verify(&base_digest));
    assert!(
        !repo.join("composefs/objects/.tmp").exists()
            || fs::read_dir(repo.join("composefs/objects/.tmp"))
                .unwrap()
                .next()
                .is_none(),
        "temporaries of killed pulls were left behind"
    );
}
