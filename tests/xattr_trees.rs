//! Trees whose extended attributes are larger or more numerous than the
//! scanner's first read buffer (issue 10 item 1: such a tree once made the
//! directory scan spin forever). Each tree is scanned, written, and checked
//! three ways: the image equals the one built from the tree's dumpfile
//! (print, re-parse, rebuild), `sealctl mkcomposefs DIR` writes the same
//! bytes within a time limit, and `sealctl build` + `sealctl dump` give back
//! the same xattrs. Needs root for `trusted.*`, `security.*` and device
//! nodes; under `CI=true` not being root is a failure, elsewhere a skip.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sealroot::image::dumpfile;
use sealroot::image::erofs::{write_image, WriteOptions};
use sealroot::image::scan::{scan_directory, ScanOptions};

mod common;

fn set(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(name).unwrap();
    rustix::fs::lsetxattr(path, c.as_c_str(), value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| {
            panic!(
                "setxattr {name} ({} bytes) on {}: {e}",
                value.len(),
                path.display()
            )
        });
}

/// A POSIX access ACL in the kernel's xattr encoding (version 2, then
/// tag/perm/id entries, sorted as the kernel requires): owner, `users`
/// named users, owning group, `groups` named groups, mask, other.
fn posix_acl(users: u32, groups: u32) -> Vec<u8> {
    const UNDEFINED_ID: u32 = u32::MAX;
    let mut v = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    };
    entry(0x01, 7, UNDEFINED_ID);
    for i in 0..users {
        entry(0x02, 5, 1000 + i);
    }
    entry(0x04, 5, UNDEFINED_ID);
    for i in 0..groups {
        entry(0x08, 5, 2000 + i);
    }
    entry(0x10, 7, UNDEFINED_ID);
    entry(0x20, 4, UNDEFINED_ID);
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The tree of issue 10 item 1.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("dir")).unwrap();
    for (name, len) in [("v300", 300), ("v2000", 2000), ("v4000", 4000)] {
        let f = root.join(name);
        fs::write(&f, pattern(100, 1)).unwrap();
        set(&f, "user.value", &pattern(len, 7));
    }
    let acl = root.join("acl30");
    fs::write(&acl, b"acl").unwrap();
    let acl_value = posix_acl(13, 13);
    assert_eq!((acl_value.len() - 4) / 8, 30, "30 ACL entries");
    set(&acl, "system.posix_acl_access", &acl_value);
    let ima = root.join("ima");
    fs::write(&ima, pattern(5000, 3)).unwrap();
    let mut ima_value = vec![0x03, 0x02];
    ima_value.extend(pattern(498, 9));
    set(&ima, "security.ima", &ima_value);
    let many = root.join("fifty");
    fs::write(&many, b"many").unwrap();
    for i in 0..50 {
        set(&many, &format!("user.attr{i:02}"), &pattern(20, i as u8));
    }
    std::os::unix::fs::symlink("v300", root.join("link")).unwrap();
    set(&root.join("link"), "trusted.on-symlink", &pattern(1500, 4));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("null").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    set(&root.join("null"), "trusted.on-device", &pattern(700, 5));
    set(&root.join("dir"), "user.on-dir", &pattern(3000, 6));
    set(&root.join("dir"), "trusted.overlay.opaque", b"y");
}

/// Run `cmd`, failing the test (not hanging it) after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn large_and_many_xattrs_scan_build_and_round_trip() {
    if !rustix::process::geteuid().is_root() {
        common::missing("root (for trusted.*/security.* xattrs and device nodes)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_tree(&src);

    // The CLI first, bounded: the old scanner spun forever on these trees,
    // and a hang must be a failure, not a stuck test run.
    let out_img = tmp.path().join("cli.img");
    let mut cmd = common::sealctl_cmd();
    cmd.arg("mkcomposefs").arg(&src).arg(&out_img);
    let out = run_bounded(cmd, Duration::from_secs(60));
    common::assert_success(&out);

    let tree = scan_directory(&src, &ScanOptions::default(), None).unwrap();
    let image = write_image(&tree, &WriteOptions::default()).unwrap();

    // The dumpfile names every xattr with its full value.
    let mut dump = Vec::new();
    dumpfile::write(&tree, &mut dump).unwrap();
    let text = String::from_utf8_lossy(&dump).into_owned();
    for needle in [
        "user.value=",
        "system.posix_acl_access=",
        "security.ima=",
        "user.attr49=",
        "trusted.on-symlink=",
        "trusted.on-device=",
        "user.on-dir=",
        "trusted.overlay.opaque=y",
    ] {
        assert!(text.contains(needle), "dumpfile lacks {needle}");
    }
    let reparsed = dumpfile::parse(&dump, true).unwrap();
    let mut dump2 = Vec::new();
    dumpfile::write(&reparsed, &mut dump2).unwrap();
    assert_eq!(dump, dump2, "dumpfile round trip is stable");
    assert_eq!(
        write_image(&reparsed, &WriteOptions::default()).unwrap(),
        image,
        "image from the dumpfile equals the image from the directory"
    );

    assert_eq!(fs::read(&out_img).unwrap(), image, "CLI image");

    // sealctl build, then sealctl dump of the stored image: same xattrs.
    let repo = tmp.path().join("repo");
    let mut cmd = common::sealctl_cmd();
    cmd.arg("build").arg(&src).arg("--repo").arg(&repo);
    let out = run_bounded(cmd, Duration::from_secs(60));
    common::assert_success(&out);
    let images: Vec<_> = fs::read_dir(repo.join("composefs/images"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(images.len(), 1);
    let mut cmd = common::sealctl_cmd();
    cmd.arg("dump").arg(images[0].path());
    let out = run_bounded(cmd, Duration::from_secs(60));
    common::assert_success(&out);
    let dumped = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        // Compare the xattr part of each entry (after the payload fields).
        let xattrs: Vec<&str> = line.split(' ').filter(|f| f.contains('=')).collect();
        for x in xattrs {
            assert!(dumped.contains(x), "sealctl dump lacks {x}");
        }
    }
}

#[test]
fn xattr_value_over_the_format_limit_is_a_typed_error() {
    // The format stores a value length in 16 bits; a 64 KiB value (the
    // kernel's own maximum) cannot be written. tmpfs takes such a value.
    if !rustix::process::geteuid().is_root() {
        common::missing("root (to mount a tmpfs)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    if rustix::mount::mount(
        "sealroot-test",
        &mnt,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot mount tmpfs"
        );
        eprintln!("SKIP: cannot mount tmpfs here");
        return;
    }
    let f = mnt.join("huge");
    fs::write(&f, b"x").unwrap();
    let c = c"trusted.huge";
    let ok =
        rustix::fs::lsetxattr(&f, c, &vec![1u8; 65536], rustix::fs::XattrFlags::empty()).is_ok();
    let result = scan_directory(&mnt, &ScanOptions::default(), None);
    let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
    if !ok {
        common::missing("a tmpfs that takes a 64 KiB xattr value");
        return;
    }
    match result {
        Err(sealroot::image::scan::ScanError::XattrTooLong { name, .. }) => {
            assert_eq!(name, b"trusted.huge")
        }
        other => panic!("expected XattrTooLong, got {other:?}"),
    }
}
