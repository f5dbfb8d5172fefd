//! Incremental builds (`--digest-cache`): a rebuild reuses the digests of
//! unchanged files, gives the same image byte for byte, and never reuses a
//! digest for a file whose content changed, however the change was hidden.
//!
//! The racy-timestamp rule keeps every file written less than 2 s before a
//! scan out of its cache, and these tests' files are all that young. So,
//! except where the rule itself is tested, the cache is made from a scan
//! record whose start time is moved an hour ahead ([`settled_cache`]): as if
//! the files had been written long before. Nothing here sleeps for a fixed
//! time or asserts on one; where a test needs a later ctime it waits until
//! the filesystem's clock has ticked ([`wait_for_ctime_after`]).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::digest_cache::{DigestCache, FileKey, ScanRecord, Stamp};
use sealroot::image::erofs::{write_image, WriteOptions};
use sealroot::image::fsverity::digest_bytes;
use sealroot::image::repo::{self, BuildOptions, Repo};
use sealroot::image::scan::{scan_directory, scan_directory_cached, ScanOptions};
use sealroot::image::tree::{InodeKind, Tree, ROOT};

const ALG: HashAlgorithm = HashAlgorithm::Sha256;

fn scan(root: &Path, cache: &DigestCache) -> (Tree, ScanRecord) {
    scan_directory_cached(root, &ScanOptions::default(), None, cache).unwrap()
}

fn image(tree: &Tree) -> Vec<u8> {
    write_image(tree, &WriteOptions::default()).unwrap()
}

/// The cache `record` leaves, as if its files had settled long before.
fn settled_cache(record: &ScanRecord) -> DigestCache {
    let mut r = record.clone();
    r.started = Stamp {
        sec: Stamp::now().sec + 3600,
        nsec: 0,
    };
    DigestCache::from_record(ALG, &r)
}

fn regular<'a>(tree: &'a Tree, name: &str) -> &'a sealroot::image::tree::RegularFile {
    let id = tree.lookup(ROOT, name.as_bytes()).unwrap();
    match &tree.inodes[id].kind {
        InodeKind::Regular(r) => r,
        k => panic!("{name}: {k:?}"),
    }
}

fn digest_in(tree: &Tree, name: &str) -> Option<Digest> {
    regular(tree, name).digest
}

/// Wait until a freshly touched file gets a ctime later than `path`'s, so
/// the next change of `path` is one tick later than its last.
fn wait_for_ctime_after(path: &Path) {
    // From std, not FileKey: the key is what is being tested.
    let ctime = |m: fs::Metadata| (m.ctime(), m.ctime_nsec());
    let before = ctime(fs::symlink_metadata(path).unwrap());
    let probe = path.with_extension("probe");
    // Bounded, so a broken clock or key fails the test instead of hanging
    // it; a real filesystem ticks within a few milliseconds (2 s on FAT).
    for _ in 0..10_000 {
        fs::write(&probe, b"").unwrap();
        let now = ctime(fs::metadata(&probe).unwrap());
        fs::remove_file(&probe).unwrap();
        if now > before {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!(
        "no ctime later than {before:?} appeared in {}",
        path.display()
    );
}

/// Overwrite `path` in place with `data`, then put its mtime back.
fn rewrite_keeping_mtime(path: &Path, data: &[u8]) {
    let old = fs::metadata(path).unwrap();
    let mtime = old.modified().unwrap();
    fs::write(path, data).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let new = fs::metadata(path).unwrap();
    assert_eq!(new.modified().unwrap(), mtime, "mtime restored");
    assert_eq!(new.ino(), old.ino(), "same inode");
}

fn sample_tree(p: &Path) {
    fs::write(p.join("empty"), b"").unwrap();
    fs::write(p.join("small"), [b's'; 64]).unwrap();
    fs::write(p.join("just-over"), [b'o'; 65]).unwrap();
    fs::write(p.join("page"), vec![b'p'; 4096]).unwrap();
    fs::write(p.join("big"), vec![7u8; 300_000]).unwrap();
    fs::create_dir(p.join("sub")).unwrap();
    for i in 0..40 {
        fs::write(p.join(format!("sub/f{i}")), vec![i as u8; 100 + 97 * i]).unwrap();
    }
    std::os::unix::fs::symlink("sub/f1", p.join("link")).unwrap();
}

#[test]
fn cached_rebuild_is_bit_identical_and_reads_no_unchanged_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    sample_tree(p);
    let cold = scan_directory(p, &ScanOptions::default(), None).unwrap();
    let (first, record) = scan(p, &DigestCache::empty(ALG));
    assert_eq!(first.inodes, cold.inodes);
    // just-over, page, big and the 40 in sub/.
    assert_eq!(
        (record.files.len(), record.hashed, record.reused),
        (43, 43, 0)
    );
    let cache = settled_cache(&record);
    assert_eq!(cache.len(), 43);
    let (second, again) = scan(p, &cache);
    assert_eq!((again.hashed, again.reused), (0, 43));
    assert_eq!(second.inodes, cold.inodes);
    assert!(image(&second) == image(&cold), "cached image differs");
    // The same through the file format (decoded, not loaded: `load`
    // refuses this cache's start time, an hour ahead).
    let loaded = DigestCache::decode(Path::new("c"), &cache.encode(), ALG).unwrap();
    assert_eq!(loaded, cache);
    let (third, _) = scan(p, &loaded);
    assert!(image(&third) == image(&cold));
}

/// The case the key is built for: same inode, same size, mtime put back
/// with `utimensat`. Only the ctime shows the change.
#[test]
fn content_changed_with_mtime_restored_and_size_kept_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, vec![b'a'; 5000]).unwrap();
    let (_, record) = scan(dir.path(), &DigestCache::empty(ALG));
    let cache = settled_cache(&record);
    let before = FileKey::of(&fs::metadata(&f).unwrap());
    wait_for_ctime_after(&f);
    rewrite_keeping_mtime(&f, &[b'b'; 5000]);
    let after = FileKey::of(&fs::metadata(&f).unwrap());
    assert_eq!(
        (after.dev, after.ino, after.size, after.mtime, after.btime),
        (
            before.dev,
            before.ino,
            before.size,
            before.mtime,
            before.btime
        ),
        "only the ctime may differ, or this test tests nothing"
    );
    let (tree, again) = scan(dir.path(), &cache);
    assert_eq!(again.reused, 0);
    assert_eq!(
        digest_in(&tree, "f"),
        Some(digest_bytes(ALG, &[b'b'; 5000]))
    );
}

/// `mv new f` over the old file: another inode, same size and mtime.
#[test]
fn file_replaced_by_rename_with_same_size_and_mtime_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, vec![b'a'; 5000]).unwrap();
    let (_, record) = scan(dir.path(), &DigestCache::empty(ALG));
    let cache = settled_cache(&record);
    let old = fs::metadata(&f).unwrap();
    let tmp = dir.path().join(".f.new");
    fs::write(&tmp, vec![b'c'; 5000]).unwrap();
    fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    fs::rename(&tmp, &f).unwrap();
    let new = fs::metadata(&f).unwrap();
    assert_ne!(new.ino(), old.ino());
    assert_eq!(
        (new.len(), new.modified().unwrap()),
        (old.len(), old.modified().unwrap())
    );
    let (tree, again) = scan(dir.path(), &cache);
    assert_eq!(again.reused, 0);
    assert_eq!(
        digest_in(&tree, "f"),
        Some(digest_bytes(ALG, &[b'c'; 5000]))
    );
}

/// With the real start time, files written just before the scan are not
/// cached at all: a change in the same clock tick (same mtime, ctime and
/// size) could not be told from no change.
#[test]
fn a_file_changed_in_the_same_tick_as_the_scan_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, vec![b'a'; 5000]).unwrap();
    fs::write(dir.path().join("g"), vec![b'g'; 5000]).unwrap();
    let (_, record) = scan(dir.path(), &DigestCache::empty(ALG));
    assert_eq!(record.files.len(), 2);
    let cache = DigestCache::from_record(ALG, &record);
    assert!(cache.is_empty(), "young files were cached");
    rewrite_keeping_mtime(&f, &[b'z'; 5000]);
    let (tree, again) = scan(dir.path(), &cache);
    assert_eq!((again.reused, again.hashed), (0, 2));
    assert_eq!(
        digest_in(&tree, "f"),
        Some(digest_bytes(ALG, &[b'z'; 5000]))
    );
    // The same rule holds for a cache file read back: its start time
    // decides again.
    let path = dir.path().join("cache");
    DigestCache::from_record(ALG, &record).save(&path).unwrap();
    assert!(DigestCache::load(&path, ALG).unwrap().is_empty());
}

/// A cache made on another tree (same names, sizes, mtimes; other content)
/// or on another device (same inode numbers) reuses nothing.
#[test]
fn a_cache_from_another_tree_or_device_reuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    for i in 0..10 {
        let name = format!("f{i}");
        fs::write(a.join(&name), vec![b'a'; 1000 + i]).unwrap();
        fs::write(b.join(&name), vec![b'b'; 1000 + i]).unwrap();
        let mtime = fs::metadata(a.join(&name)).unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(b.join(&name))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    let (_, record_a) = scan(&a, &DigestCache::empty(ALG));
    let cache_a = settled_cache(&record_a);
    let (tree_b, on_b) = scan(&b, &cache_a);
    assert_eq!(on_b.reused, 0);
    assert_eq!(
        digest_in(&tree_b, "f3"),
        Some(digest_bytes(ALG, &[b'b'; 1003]))
    );
    // Tree a's own keys on another device number.
    let mut moved = record_a.clone();
    for o in &mut moved.files {
        o.key.dev ^= 1;
    }
    let (_, on_a) = scan(&a, &settled_cache(&moved));
    assert_eq!(on_a.reused, 0);
    let (_, on_a) = scan(&a, &cache_a);
    assert_eq!(on_a.reused, 10, "control: the right cache is used");
}

/// Two names of one inode share one entry; a change through either name
/// is seen under both.
#[test]
fn hard_links_share_an_entry_and_both_see_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, vec![b'h'; 3000]).unwrap();
    fs::hard_link(&f, dir.path().join("g")).unwrap();
    let (_, record) = scan(dir.path(), &DigestCache::empty(ALG));
    assert_eq!(record.files.len(), 2);
    let cache = settled_cache(&record);
    assert_eq!(cache.len(), 1);
    let (_, again) = scan(dir.path(), &cache);
    assert_eq!(again.reused, 2);
    wait_for_ctime_after(&f);
    rewrite_keeping_mtime(&f, &[b'k'; 3000]);
    let (tree, after) = scan(dir.path(), &cache);
    assert_eq!(after.reused, 0);
    let want = Some(digest_bytes(ALG, &[b'k'; 3000]));
    assert_eq!((digest_in(&tree, "f"), digest_in(&tree, "g")), (want, want));
}

/// A file that shrinks to 64 bytes or less becomes inline: no digest, no
/// object, whatever the cache holds for its inode.
#[test]
fn a_file_shrunk_to_inline_size_is_inlined() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, vec![b'x'; 5000]).unwrap();
    let (_, record) = scan(dir.path(), &DigestCache::empty(ALG));
    let cache = settled_cache(&record);
    rewrite_keeping_mtime(&f, b"now short");
    let (tree, again) = scan(dir.path(), &cache);
    assert_eq!((again.reused, again.hashed, again.files.len()), (0, 0, 0));
    let r = regular(&tree, "f");
    assert_eq!(r.inline.as_deref(), Some(&b"now short"[..]));
    assert_eq!((r.digest, r.payload.as_deref()), (None, None));
}

/// With a repository, a cached digest is only reused when its object is
/// there; a missing one is added again from the file.
#[test]
fn a_reused_digest_whose_object_is_missing_is_read_and_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let r = Repo::new(dir.path().join("repo"));
    let opts = BuildOptions::default();
    let (cold, record) = repo::build_cached(&src, &r, &opts, &DigestCache::empty(ALG)).unwrap();
    assert_eq!(cold.digests_reused, 0);
    let cache = settled_cache(&record);
    let big = digest_bytes(ALG, &vec![7u8; 300_000]);
    fs::remove_file(r.object_path(&big)).unwrap();
    let (warm, again) = repo::build_cached(&src, &r, &opts, &cache).unwrap();
    assert_eq!(warm.digest, cold.digest);
    assert_eq!((again.reused, again.hashed), (42, 1));
    assert_eq!((warm.objects_added, warm.digests_reused), (1, 42));
    assert_eq!(fs::read(r.object_path(&big)).unwrap(), vec![7u8; 300_000]);
    let report = repo::verify(
        &r,
        &warm.digest,
        &[],
        0,
        &sealroot::image::progress::Progress::hidden(),
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.objects, 43);
}

fn sealctl(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sealctl"))
        .args(args)
        .output()
        .unwrap()
}

/// The command line: a damaged, truncated, foreign or unreadable cache is
/// a warning and a cold build with the same image; the run leaves a valid
/// cache behind. Both commands take the option.
#[test]
fn a_bad_cache_file_is_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let cache = dir.path().join("cache/digests");
    let img = |n: &str| dir.path().join(n);
    let mk = |out: &Path| {
        sealctl(&[
            "mkcomposefs".as_ref(),
            "--digest-cache".as_ref(),
            cache.as_os_str(),
            src.as_os_str(),
            out.as_os_str(),
        ])
    };
    let first = mk(&img("first.img"));
    assert!(first.status.success(), "{first:?}");
    assert!(
        first.stderr.is_empty(),
        "first run (no cache yet) is silent: {first:?}"
    );
    let good = fs::read(&cache).unwrap();
    DigestCache::load(&cache, ALG).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let damaged: [(&str, Vec<u8>); 4] = [
        ("flipped", flipped),
        ("truncated", good[..good.len() - 1].to_vec()),
        (
            "garbage",
            b"not a cache at all, but long enough to be read as one".to_vec(),
        ),
        ("sha512", {
            let r = ScanRecord {
                started: Stamp::now(),
                ..Default::default()
            };
            DigestCache::from_record(HashAlgorithm::Sha512, &r).encode()
        }),
    ];
    for (what, bytes) in damaged {
        fs::write(&cache, &bytes).unwrap();
        let out = mk(&img(what));
        assert!(out.status.success(), "{what}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning: digest cache not used"),
            "{what}: {err}"
        );
        assert!(fs::read(img(what)).unwrap() == fs::read(img("first.img")).unwrap());
        DigestCache::load(&cache, ALG).unwrap();
    }
    // A directory where the file should be: not readable, not writable.
    fs::remove_file(&cache).unwrap();
    fs::create_dir(&cache).unwrap();
    let out = sealctl(&[
        "build".as_ref(),
        src.as_os_str(),
        "--repo".as_ref(),
        dir.path().join("repo").as_os_str(),
        "--digest-cache".as_ref(),
        cache.as_os_str(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: digest cache not used"), "{err}");
    assert!(err.contains("warning: digest cache not saved"), "{err}");
    let out = sealctl(&[
        "mkcomposefs".as_ref(),
        "--from-file".as_ref(),
        "--digest-cache".as_ref(),
        cache.as_os_str(),
        "-".as_ref(),
        img("x").as_os_str(),
    ]);
    assert!(!out.status.success());
}
