//! `sealctl dump` round trips: for every composefs test vector,
//! dumpfile -> image (writer) -> dump (reader) -> image must give the same
//! bytes, and dumping the second image must give the same text again. Where
//! the writer reproduces the reference image (the vectors test checks the
//! SHA-256), the reader is thereby exercised on the reference tool's bytes.
//! Plus trees built in code (hardlinks defined out of breadth-first order,
//! whiteouts, escaped overlay xattrs, external files) and the `sealctl dump`
//! binary itself.
//!
//! Test data: env `SEALROOT_TESTDATA`, else `CARGO_MANIFEST_DIR/../shared/
//! testdata/composefs`, else `/work/shared/testdata/composefs`; absent => skip
//! with a message.

use std::path::PathBuf;

mod common;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::dumpfile;
use sealroot::image::erofs::reader::{read_image, referenced_objects};
use sealroot::image::erofs::{write_image, WriteOptions};
use sealroot::image::tree::{Inode, InodeKind, RegularFile, Tree, ROOT};

/// Vectors whose image the writer does not yet lay out like the reference
/// (tests/vectors.rs KNOWN_MISMATCH): a long symlink's inline target crosses a
/// block boundary, which the kernel refuses too, so the reader must refuse it.
const KNOWN_WRITER_ISSUE: &[&str] = &["honggfuzz-long-symlink.dump", "longlink.dump"];

fn dump(tree: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    dumpfile::write(tree, &mut out).unwrap();
    out
}

/// image -> dump -> image must reproduce `image`; returns the dump text.
fn round_trip(name: &str, image: &[u8], opts: &WriteOptions) -> Result<Vec<u8>, String> {
    let tree = read_image(image).map_err(|e| format!("{name}: reader refused the image: {e}"))?;
    let text = dump(&tree);
    let reparsed = dumpfile::parse(&text, true)
        .map_err(|e| format!("{name}: dump output does not parse strictly: {e}"))?;
    let image2 = write_image(&reparsed, opts)
        .map_err(|e| format!("{name}: writer refused the dumped tree: {e}"))?;
    if image2 != image {
        let at = image.iter().zip(&image2).position(|(a, b)| a != b);
        return Err(format!(
            "{name}: image -> dump -> image differs ({} vs {} bytes, first difference at {at:?})",
            image.len(),
            image2.len()
        ));
    }
    let text2 = dump(&read_image(&image2).unwrap());
    if text2 != text {
        return Err(format!("{name}: dump output is not stable"));
    }
    Ok(text)
}

#[test]
fn vectors_round_trip_through_the_reader() {
    let Some(dir) = common::testdata_or_skip() else {
        return;
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let mut checked = 0;
    let mut failures = Vec::new();
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".sha256") else {
            continue;
        };
        let input = common::read_vector(&dir.join(base));
        let strict = !common::LENIENT.contains(&base.trim_end_matches(".gz"));
        let opts = common::vector_options(&dir, base);
        let Some(image) = common::vector_image(base, &input, strict, &opts, &mut failures) else {
            continue;
        };
        match round_trip(base, &image, &opts) {
            Ok(_) => checked += 1,
            Err(msg)
                if KNOWN_WRITER_ISSUE.contains(&base) && msg.contains("cross a block boundary") =>
            {
                eprintln!("KNOWN WRITER ISSUE {msg}");
            }
            Err(msg) => failures.push(msg),
        }
        // Every truncation of a real image: no panic.
        if image.len() <= 64 * 1024 {
            for len in (0..image.len()).step_by(7) {
                let _ = read_image(&image[..len]);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures ({checked} ok):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 0, "no vectors found in {}", dir.display());
    eprintln!("{checked} vectors round-trip");
}

fn file(content: &[u8]) -> Inode {
    let mut i = Inode::new(
        InodeKind::Regular(RegularFile {
            size: content.len() as u64,
            inline: (!content.is_empty()).then(|| content.into()),
            payload: None,
            digest: None,
        }),
        0o644,
    );
    i.mtime.sec = 1_700_000_000;
    i
}

fn external(size: u64, fill: u8) -> (Inode, Digest) {
    let d = Digest::from_bytes(HashAlgorithm::Sha256, &[fill; 32]).unwrap();
    let mut i = Inode::new(
        InodeKind::Regular(RegularFile {
            size,
            inline: None,
            payload: Some(sealroot::layout::object_name(&d).into_bytes().into()),
            digest: Some(d),
        }),
        0o644,
    );
    i.mtime.sec = 1_700_000_000;
    (i, d)
}

fn dir() -> Inode {
    let mut i = Inode::new(InodeKind::Directory(vec![]), 0o755);
    i.mtime.sec = 1_700_000_000;
    i
}

/// A tree exercising what dumpfiles from directories carry.
fn built_tree() -> (Tree, Vec<Digest>) {
    let mut t = Tree::with_root(dir());
    t.root_mut().set_xattr(b"trusted.overlay.opaque", b"y");
    t.root_mut().set_xattr(b"user.k", b"v");
    let a = t.add(ROOT, b"a", dir()).unwrap();
    let z = t.add(ROOT, b"z", dir()).unwrap();
    // Defined at /a/orig (first in depth-first order, as dumpfiles define
    // hardlinks), linked from /top-link, which comes first breadth-first: the
    // reader must infer the definition from the inode placement.
    let zz = t.add(z, b"deeper", dir()).unwrap();
    let shared = t.add(a, b"orig", file(b"shared content\n")).unwrap();
    t.link(zz, b"link-to-orig", shared).unwrap();
    t.link(ROOT, b"top-link", shared).unwrap();
    t.inodes[shared].nlink = 3;
    t.secondary_links = vec![
        (zz, b"link-to-orig".to_vec().into()),
        (ROOT, b"top-link".to_vec().into()),
    ];
    let (e1, d1) = external(1 << 20, 0xaa);
    let (e2, d2) = external(65, 0x11);
    let (e3, _) = external(70_000, 0xaa);
    t.add(a, b"big", e1).unwrap();
    t.add(z, b"small-ext", e2).unwrap();
    t.add(zz, b"same-object", e3).unwrap();
    let mut w = Inode::new(InodeKind::CharDevice(0), 0o644);
    w.mtime.sec = 1_700_000_000;
    t.add(a, b"whiteout", w).unwrap();
    let mut esc = file(b"x");
    esc.set_xattr(b"trusted.overlay.redirect", b"/somewhere");
    esc.set_xattr(b"trusted.overlay.custom", b"1");
    esc.set_xattr(b"security.selinux", b"system_u:object_r:etc_t:s0");
    t.add(z, b"escaped", esc).unwrap();
    let mut l = Inode::new(InodeKind::Symlink(b"../z/escaped".to_vec().into()), 0o777);
    l.mtime.sec = 1_700_000_000;
    t.add(a, b"sym", l).unwrap();
    let mut dev = Inode::new(InodeKind::BlockDevice(0x0801), 0o600);
    dev.mtime.sec = 1_700_000_001;
    dev.uid = 70_000;
    t.add(ROOT, b"sda1", dev).unwrap();
    t.add(ROOT, b"empty", file(b"")).unwrap();
    t.add(ROOT, b"inline-4096", file(&[7u8; 4096])).unwrap();
    (t, vec![d2, d1])
}

#[test]
fn built_trees_round_trip() {
    let (tree, mut digests) = built_tree();
    for opts in [
        WriteOptions::default(),
        WriteOptions {
            min_version: 1,
            max_version: 1,
        },
    ] {
        let image = write_image(&tree, &opts).unwrap();
        let text = round_trip("built tree", &image, &opts).unwrap();
        let back = read_image(&image).unwrap();
        // The read tree is the written one, up to what the image cannot
        // carry (link counts are derived; secondary links inferred).
        let shared = back.lookup(ROOT, b"top-link").unwrap();
        assert_eq!(
            back.lookup(back.lookup(ROOT, b"a").unwrap(), b"orig"),
            Some(shared)
        );
        assert_eq!(
            back.secondary_links.len(),
            2,
            "definition inferred at /a/orig: {:?}",
            back.secondary_links
        );
        assert!(!back
            .secondary_links
            .iter()
            .any(|(d, n)| *d == back.lookup(ROOT, b"a").unwrap() && &**n == b"orig"));
        let escaped = back
            .lookup(back.lookup(ROOT, b"z").unwrap(), b"escaped")
            .unwrap();
        let mut names: Vec<&[u8]> = back.inodes[escaped]
            .xattrs
            .iter()
            .map(|x| &*x.name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                &b"security.selinux"[..],
                b"trusted.overlay.custom",
                b"trusted.overlay.redirect"
            ]
        );
        assert_eq!(
            back.inodes[escaped].xattr(b"trusted.overlay.redirect"),
            Some(&b"/somewhere"[..])
        );
        let wh = back
            .lookup(back.lookup(ROOT, b"a").unwrap(), b"whiteout")
            .unwrap();
        assert!(back.inodes[wh].kind.is_whiteout());
        assert!(back.inodes[back.lookup(ROOT, b"a").unwrap()]
            .xattrs
            .is_empty());
        let root_x: Vec<&[u8]> = back.root().xattrs.iter().map(|x| &*x.name).collect();
        assert_eq!(root_x, vec![&b"trusted.overlay.opaque"[..], b"user.k"]);
        assert!(
            !String::from_utf8_lossy(&text).contains("/00 "),
            "stubs not dumped"
        );
        digests.sort();
        assert_eq!(referenced_objects(&image).unwrap(), digests);
    }
}

#[test]
fn sealctl_dump_prints_and_fails_cleanly() {
    let (tree, _) = built_tree();
    let image = write_image(&tree, &WriteOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img_path = dir.path().join("image.cfs");
    std::fs::write(&img_path, &image).unwrap();
    let bin = env!("CARGO_BIN_EXE_sealctl");
    let out = std::process::Command::new(bin)
        .arg("dump")
        .arg(&img_path)
        .output()
        .unwrap();
    common::assert_success(&out);
    assert_eq!(out.stdout, dump(&read_image(&image).unwrap()));
    // A corrupted image: one line on stderr, non-zero exit, nothing on stdout.
    let mut bad = image.clone();
    bad[1024] ^= 0xff;
    std::fs::write(&img_path, &bad).unwrap();
    let out = std::process::Command::new(bin)
        .arg("dump")
        .arg(&img_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("sealctl dump: "), "{err}");
    assert!(err.contains("EROFS"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Images made from real directories (the `sealctl mkcomposefs DIR` path):
/// regular files around the 64-byte inline limit, a hardlink, symlinks,
/// a fifo, nested and empty directories, user xattrs where the filesystem
/// allows them.
#[test]
fn scanned_directories_round_trip() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc/deep/er/still")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("etc/64"), [b'a'; 64]).unwrap();
    std::fs::write(root.join("etc/65"), [b'b'; 65]).unwrap();
    std::fs::write(root.join("etc/empty"), b"").unwrap();
    std::fs::write(root.join("etc/deep/er/still/big"), vec![3u8; 200_000]).unwrap();
    std::fs::hard_link(root.join("etc/65"), root.join("hard65")).unwrap();
    symlink("etc/64", root.join("link")).unwrap();
    symlink("x".repeat(1000), root.join("longlink")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Only a filesystem without user xattrs may leave the xattr out.
    let xattr_set = match rustix::fs::setxattr(
        root.join("etc/64"),
        "user.comment",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => true,
        Err(rustix::io::Errno::NOTSUP) => {
            eprintln!("SKIP (part): the temporary directory's filesystem has no user xattrs");
            false
        }
        Err(e) => panic!("setxattr user.comment: {e}"),
    };
    let opts = sealroot::image::scan::ScanOptions::default();
    let tree = sealroot::image::scan::scan_directory(&root, &opts, None).unwrap();
    let wopts = WriteOptions::default();
    let image = write_image(&tree, &wopts).unwrap();
    round_trip("scanned dir", &image, &wopts).unwrap();
    let back = read_image(&image).unwrap();
    let etc = back.lookup(ROOT, b"etc").unwrap();
    let f65 = back.lookup(etc, b"65").unwrap();
    // Directory scans, like mkcomposefs, keep hardlinked files as separate
    // inodes (hardlinks come from dumpfiles); both point at one object.
    assert!(back.lookup(ROOT, b"hard65").is_some());
    match &back.inodes[f65].kind {
        InodeKind::Regular(r) => {
            assert!(r.inline.is_none(), "65 bytes are external");
            let want = sealroot::image::fsverity::digest_bytes(HashAlgorithm::Sha256, &[b'b'; 65]);
            assert_eq!(r.digest, Some(want));
        }
        k => panic!("{k:?}"),
    }
    let f64 = &back.inodes[back.lookup(etc, b"64").unwrap()];
    match &f64.kind {
        InodeKind::Regular(r) => assert_eq!(r.inline.as_deref(), Some(&[b'a'; 64][..])),
        k => panic!("{k:?}"),
    }
    if xattr_set {
        assert!(
            f64.xattrs
                .iter()
                .any(|x| &*x.name == b"user.comment" && &*x.value == b"hello"),
            "user.comment lost: {:?}",
            f64.xattrs
        );
    }
    assert_eq!(
        back.inodes[back.lookup(ROOT, b"fifo").unwrap()].kind,
        InodeKind::Fifo
    );
    assert_eq!(
        back.inodes[back.lookup(ROOT, b"longlink").unwrap()].kind,
        InodeKind::Symlink("x".repeat(1000).into_bytes().into())
    );
    assert_eq!(referenced_objects(&image).unwrap().len(), 2);
}

/// `SEALROOT_WRITE_SEEDS=DIR cargo test --test dump_roundtrip write_fuzz_seeds`
/// writes the built tree's images (format 0 and 1) as erofs_read fuzz seeds.
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("SEALROOT_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (tree, _) = built_tree();
    for v in [0, 1] {
        let opts = WriteOptions {
            min_version: v,
            max_version: v,
        };
        let image = write_image(&tree, &opts).unwrap();
        std::fs::write(dir.join(format!("built-v{v}.img")), image).unwrap();
    }
}
