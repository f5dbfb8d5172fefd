//! The image reader against hostile input: hand-built images (an independent
//! minimal EROFS builder below, written from the on-disk format, not from the
//! project's writer), every truncation of a real image, deterministic random
//! byte flips, self-referencing and cyclic directories, huge sizes. Every case
//! must return `Ok` or `Err`, never panic or hang; the crafted attacks must be
//! `Err` with the specific variant.

use sealroot::digest::{Digest, HashAlgorithm};
use sealroot::image::erofs::reader::{read_image, referenced_objects, ReadError};
use sealroot::image::tree::{InodeKind, Tree, ROOT};

const BLOCK: usize = 4096;

/// What a test inode holds.
#[derive(Clone)]
enum Kind {
    /// Entries (name, node index); `.` and `..` are added by the builder
    /// unless `raw_dots` overrides them.
    Dir(Vec<(&'static [u8], usize)>),
    /// Inline content.
    File(Vec<u8>),
    /// External (chunk-based) file of this size; metacopy/redirect go in xattrs.
    External(u64),
    Symlink(&'static [u8]),
    Chr(u32),
    Fifo,
}

#[derive(Clone)]
struct Node {
    mode: u16,
    kind: Kind,
    compact: bool,
    /// Inline xattrs: (name index, suffix, value).
    xattrs: Vec<(u8, &'static [u8], Vec<u8>)>,
    /// Indexes into `Spec::shared`.
    shared: Vec<usize>,
    nlink: u32,
    mtime: u64,
    /// Override for the `.`/`..` targets (node indexes).
    raw_dots: Option<(usize, usize)>,
    /// Override of the stored size field.
    size_override: Option<u64>,
}

fn node(mode: u16, kind: Kind) -> Node {
    Node {
        mode,
        kind,
        compact: false,
        xattrs: vec![],
        shared: vec![],
        nlink: 1,
        mtime: 1_700_000_000,
        raw_dots: None,
        size_override: None,
    }
}

struct Spec {
    nodes: Vec<Node>,
    shared: Vec<(u8, &'static [u8], Vec<u8>)>,
    /// Node index of the root (usually 0).
    root: usize,
}

fn xattr_entry(index: u8, suffix: &[u8], value: &[u8]) -> Vec<u8> {
    let mut e = vec![suffix.len() as u8, index];
    e.extend_from_slice(&(value.len() as u16).to_le_bytes());
    e.extend_from_slice(suffix);
    e.extend_from_slice(value);
    while e.len() % 4 != 0 {
        e.push(0);
    }
    e
}

fn ftype(mode: u16) -> u8 {
    match u32::from(mode) & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// Build an image from `spec`. Parents are found from the directory entries.
fn build(spec: &Spec) -> Vec<u8> {
    let n = spec.nodes.len();
    // Parent of every directory (root's parent is itself).
    let mut parent = vec![spec.root; n];
    for (i, nd) in spec.nodes.iter().enumerate() {
        if let Kind::Dir(es) = &nd.kind {
            for (_, c) in es {
                if matches!(spec.nodes[*c].kind, Kind::Dir(_)) && *c != i {
                    parent[*c] = i;
                }
            }
        }
    }
    // Shared xattr area layout.
    let mut shared_off = vec![];
    let mut shared_bytes = vec![];
    for (idx, suf, val) in &spec.shared {
        shared_off.push(shared_bytes.len());
        shared_bytes.extend(xattr_entry(*idx, suf, val));
    }
    let xattr_body = |nd: &Node| -> Vec<u8> {
        if nd.xattrs.is_empty() && nd.shared.is_empty() {
            return vec![];
        }
        let mut b = vec![0u8; 12];
        b[4] = nd.shared.len() as u8;
        for s in &nd.shared {
            b.extend_from_slice(&((shared_off[*s] / 4) as u32).to_le_bytes());
        }
        for (i, s, v) in &nd.xattrs {
            b.extend(xattr_entry(*i, s, v));
        }
        b
    };
    let tail_len = |nd: &Node| -> usize {
        match &nd.kind {
            Kind::Dir(es) => 24 + 3 + es.iter().map(|(name, _)| 12 + name.len()).sum::<usize>(),
            Kind::File(d) => d.len(),
            Kind::External(size) => {
                let bits = (64 - (size - 1).leading_zeros()).max(12);
                (size.div_ceil(1u64 << bits) * 4) as usize
            }
            Kind::Symlink(t) => t.len(),
            _ => 0,
        }
    };
    // Positions.
    let mut pos = 1152usize;
    let mut nid = vec![0u64; n];
    for (i, nd) in spec.nodes.iter().enumerate() {
        pos = pos.div_ceil(32) * 32;
        let isz = if nd.compact { 32 } else { 64 };
        let head = isz + xattr_body(nd).len();
        let tail = tail_len(nd);
        if tail > 0 && (pos + head) / BLOCK != (pos + head + tail - 1) / BLOCK {
            pos = pos.div_ceil(BLOCK) * BLOCK;
        }
        nid[i] = (pos / 32) as u64;
        pos += head + tail;
    }
    let xattr_start = pos.div_ceil(BLOCK) * BLOCK;
    let mut img = vec![0u8; xattr_start + shared_bytes.len()];
    img[xattr_start..].copy_from_slice(&shared_bytes);
    // Headers.
    img[0..4].copy_from_slice(&0xd078629au32.to_le_bytes());
    img[4..8].copy_from_slice(&1u32.to_le_bytes());
    let sb = 1024;
    img[sb..sb + 4].copy_from_slice(&0xE0F5E1E2u32.to_le_bytes());
    img[sb + 8..sb + 12].copy_from_slice(&6u32.to_le_bytes());
    img[sb + 12] = 12;
    img[sb + 14..sb + 16].copy_from_slice(&(nid[spec.root] as u16).to_le_bytes());
    img[sb + 16..sb + 24].copy_from_slice(&(n as u64).to_le_bytes());
    img[sb + 24..sb + 32].copy_from_slice(&1_700_000_000u64.to_le_bytes());
    img[sb + 44..sb + 48].copy_from_slice(&((xattr_start / BLOCK) as u32).to_le_bytes());
    // Inodes.
    for (i, nd) in spec.nodes.iter().enumerate() {
        let mut tail = vec![];
        let mut layout = 2u16; // flat inline
        let mut i_u = 0u32;
        let mut size = tail_len(nd) as u64;
        match &nd.kind {
            Kind::Dir(es) => {
                let (dot, dotdot) = nd.raw_dots.unwrap_or((i, parent[i]));
                let mut all: Vec<(&[u8], u64, u8)> =
                    vec![(b".", nid[dot], 2), (b"..", nid[dotdot], 2)];
                for (name, c) in es {
                    all.push((name, nid[*c], ftype(spec.nodes[*c].mode)));
                }
                all.sort_by(|a, b| a.0.cmp(b.0));
                let mut off = all.len() * 12;
                for (name, cn, ft) in &all {
                    tail.extend_from_slice(&cn.to_le_bytes());
                    tail.extend_from_slice(&(off as u16).to_le_bytes());
                    tail.push(*ft);
                    tail.push(0);
                    off += name.len();
                }
                for (name, _, _) in &all {
                    tail.extend_from_slice(name);
                }
                size = tail.len() as u64;
            }
            Kind::File(d) => tail = d.clone(),
            Kind::External(sz) => {
                let bits = (64 - (sz - 1).leading_zeros()).max(12);
                layout = 4;
                i_u = bits - 12;
                tail = vec![0xff; tail_len(nd)];
                size = *sz;
            }
            Kind::Symlink(t) => tail = t.to_vec(),
            Kind::Chr(r) => i_u = *r,
            Kind::Fifo => {}
        }
        if let Some(s) = nd.size_override {
            size = s;
        }
        let mut xb = xattr_body(nd);

        let icount: u16 = if xb.is_empty() {
            0
        } else {
            ((xb.len() - 12) / 4 + 1) as u16
        };
        let p = nid[i] as usize * 32;
        let mut ino = vec![0u8; if nd.compact { 32 } else { 64 }];
        let format = if nd.compact { 0u16 } else { 1 } | (layout << 1);
        ino[0..2].copy_from_slice(&format.to_le_bytes());
        ino[2..4].copy_from_slice(&icount.to_le_bytes());
        ino[4..6].copy_from_slice(&nd.mode.to_le_bytes());
        ino[16..20].copy_from_slice(&i_u.to_le_bytes());
        if nd.compact {
            ino[6..8].copy_from_slice(&(nd.nlink as u16).to_le_bytes());
            ino[8..12].copy_from_slice(&(size as u32).to_le_bytes());
        } else {
            ino[8..16].copy_from_slice(&size.to_le_bytes());
            ino[32..40].copy_from_slice(&nd.mtime.to_le_bytes());
            ino[44..48].copy_from_slice(&nd.nlink.to_le_bytes());
        }
        let mut all = ino;
        all.append(&mut xb);
        all.extend_from_slice(&tail);
        img[p..p + all.len()].copy_from_slice(&all);
    }
    img
}

fn metacopy(digest: &[u8; 32]) -> Vec<u8> {
    let mut v = vec![0, 36, 0, 1];
    v.extend_from_slice(digest);
    v
}

const DIR: u16 = 0o040755;
const REG: u16 = 0o100644;

/// A tree with most features: nested dirs, inline and external files, a
/// hardlink, a symlink, a fifo, devices, a whiteout, escaped xattrs, shared
/// xattrs, root whiteout stubs, compact and extended inodes.
fn sample() -> Spec {
    let d1 = [0x11u8; 32];
    let d2 = [0x22u8; 32];
    let mut nodes = vec![
        node(DIR, Kind::Dir(vec![])),                 // 0 root
        node(DIR, Kind::Dir(vec![])),                 // 1 /sub
        node(REG, Kind::File(b"hello\n".to_vec())),   // 2 /sub/inline (+ hardlink /link)
        node(REG, Kind::External(100_000)),           // 3 /ext
        node(REG, Kind::External(5000)),              // 4 /sub/ext2
        node(0o120777, Kind::Symlink(b"sub/inline")), // 5 /sym
        node(0o010644, Kind::Fifo),                   // 6 /fifo
        node(0o020644, Kind::Chr(0x0501)),            // 7 /tty
        node(REG, Kind::File(vec![])),                // 8 /sub/wh (escaped whiteout)
        node(REG, Kind::External(100_000)),           // 9 /ext-dup
        node(REG, Kind::File(vec![])),                // 10 /empty
    ];
    nodes[0].xattrs.push((4, b"overlay.opaque", b"y".to_vec()));
    nodes[0]
        .xattrs
        .push((4, b"overlay.overlay.foo", b"bar".to_vec()));
    nodes[0].xattrs.push((1, b"note", b"root".to_vec()));
    nodes[1]
        .xattrs
        .push((4, b"overlay.overlay.whiteouts", vec![]));
    nodes[1].xattrs.push((1, b"overlay.whiteouts", vec![]));
    nodes[1]
        .xattrs
        .push((4, b"overlay.overlay.opaque", b"x".to_vec()));
    nodes[1].xattrs.push((1, b"overlay.opaque", b"x".to_vec()));
    nodes[2].nlink = 2;
    nodes[2].compact = true;
    nodes[2].shared = vec![0];
    nodes[10].shared = vec![0];
    for (i, d, r) in [
        (3, d1, &b"/11/1111"[..]),
        (4, d2, b"/22/2222"),
        (9, d1, b"/11/1111"),
    ] {
        nodes[i].xattrs.push((4, b"overlay.metacopy", metacopy(&d)));
        nodes[i].xattrs.push((4, b"overlay.redirect", r.to_vec()));
    }
    nodes[8]
        .xattrs
        .push((4, b"overlay.overlay.whiteout", vec![]));
    nodes[8].xattrs.push((1, b"overlay.whiteout", vec![]));
    nodes[8].mode = 0o100644;
    nodes[0].kind = Kind::Dir(vec![
        (b"empty", 10),
        (b"ext", 3),
        (b"ext-dup", 9),
        (b"fifo", 6),
        (b"link", 2),
        (b"sub", 1),
        (b"sym", 5),
        (b"tty", 7),
    ]);
    nodes[1].kind = Kind::Dir(vec![(b"ext2", 4), (b"inline", 2), (b"wh", 8)]);
    Spec {
        nodes,
        shared: vec![(6, b"selinux", b"system_u:object_r:usr_t:s0".to_vec())],
        root: 0,
    }
}

fn with_stubs(mut spec: Spec) -> Spec {
    let stub = spec.nodes.len();
    let mut s = node(0o020644, Kind::Chr(0));
    s.compact = true;
    spec.nodes.push(s);
    if let Kind::Dir(es) = &mut spec.nodes[spec.root].kind {
        for i in 0..256usize {
            let name: &'static [u8] = Box::leak(format!("{i:02x}").into_bytes().into_boxed_slice());
            es.push((name, stub));
        }
    }
    spec
}

fn lookup_path(t: &Tree, path: &[&[u8]]) -> usize {
    let mut id = ROOT;
    for p in path {
        id = t
            .lookup(id, p)
            .unwrap_or_else(|| panic!("{:?} missing", String::from_utf8_lossy(p)));
    }
    id
}

#[test]
fn reads_the_sample_back() {
    let img = build(&with_stubs(sample()));
    let t = read_image(&img).expect("sample image reads");
    let names: Vec<&[u8]> = t.entries(ROOT).iter().map(|e| &*e.name).collect();
    assert_eq!(
        names,
        vec![
            &b"empty"[..],
            b"ext",
            b"ext-dup",
            b"fifo",
            b"link",
            b"sub",
            b"sym",
            b"tty"
        ],
        "the 00..ff whiteout stubs are dropped, everything else is kept"
    );
    let root = t.root();
    let rx: Vec<(&[u8], &[u8])> = root.xattrs.iter().map(|x| (&*x.name, &*x.value)).collect();
    assert_eq!(
        rx,
        vec![
            (&b"trusted.overlay.foo"[..], &b"bar"[..]),
            (b"user.note", b"root")
        ],
        "opaque is the writer's, the escaped one is unescaped"
    );
    // Hardlink: the same inode under two names.
    let a = lookup_path(&t, &[b"sub", b"inline"]);
    let b = lookup_path(&t, &[b"link"]);
    assert_eq!(a, b);
    let f = &t.inodes[a];
    assert_eq!(f.nlink, 2);
    assert_eq!(f.mtime.sec, 1_700_000_000, "compact inode takes build time");
    match &f.kind {
        InodeKind::Regular(r) => {
            assert_eq!(r.size, 6);
            assert_eq!(r.inline.as_deref(), Some(&b"hello\n"[..]));
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(
        f.xattr(b"security.selinux"),
        Some(&b"system_u:object_r:usr_t:s0"[..])
    );
    // External file.
    let e = &t.inodes[lookup_path(&t, &[b"ext"])];
    match &e.kind {
        InodeKind::Regular(r) => {
            assert_eq!(r.size, 100_000);
            assert!(r.inline.is_none());
            assert_eq!(r.payload.as_deref(), Some(&b"11/1111"[..]));
            assert_eq!(r.digest.unwrap().as_bytes(), &[0x11; 32]);
        }
        k => panic!("{k:?}"),
    }
    assert!(e.xattrs.is_empty(), "metacopy/redirect are not user xattrs");
    // Whiteout restored; its directory's markers dropped.
    let wh = &t.inodes[lookup_path(&t, &[b"sub", b"wh"])];
    assert!(wh.kind.is_whiteout(), "{:?}", wh.kind);
    assert!(wh.xattrs.is_empty(), "{:?}", wh.xattrs);
    let sub = &t.inodes[lookup_path(&t, &[b"sub"])];
    assert!(sub.xattrs.is_empty(), "{:?}", sub.xattrs);
    assert_eq!(
        t.inodes[lookup_path(&t, &[b"sym"])].kind,
        InodeKind::Symlink(b"sub/inline".to_vec().into())
    );
    assert_eq!(
        t.inodes[lookup_path(&t, &[b"tty"])].kind,
        InodeKind::CharDevice(0x0501)
    );
    assert_eq!(t.inodes[lookup_path(&t, &[b"fifo"])].kind, InodeKind::Fifo);
    t.validate().unwrap();

    let objs = referenced_objects(&img).unwrap();
    let d1 = Digest::from_bytes(HashAlgorithm::Sha256, &[0x11; 32]).unwrap();
    let d2 = Digest::from_bytes(HashAlgorithm::Sha256, &[0x22; 32]).unwrap();
    assert_eq!(objs, vec![d1, d2], "distinct and sorted");
}

#[test]
fn whiteout_stubs_only_skipped_in_root() {
    // A char device 0:0 named "ab" below the root is a real whiteout.
    let mut spec = sample();
    let w = spec.nodes.len();
    spec.nodes.push(node(0o020644, Kind::Chr(0)));
    if let Kind::Dir(es) = &mut spec.nodes[1].kind {
        es.insert(0, (b"ab", w));
    }
    let t = read_image(&build(&spec)).unwrap();
    assert!(t.inodes[lookup_path(&t, &[b"sub", b"ab"])]
        .kind
        .is_whiteout());
}

fn expect_err(spec: &Spec, what: &str, check: impl Fn(&ReadError) -> bool) {
    match read_image(&build(spec)) {
        Ok(_) => panic!("{what}: hostile image accepted"),
        Err(e) => assert!(check(&e), "{what}: unexpected error {e:?}"),
    }
}

#[test]
fn self_referencing_directory_is_refused() {
    let mut spec = sample();
    if let Kind::Dir(es) = &mut spec.nodes[1].kind {
        es.push((b"zloop", 1));
    }
    expect_err(&spec, "dir contains itself", |e| {
        matches!(e, ReadError::DirectoryRevisited { .. })
    });
    // Root containing itself.
    let mut spec = sample();
    if let Kind::Dir(es) = &mut spec.nodes[0].kind {
        es.push((b"zroot", 0));
    }
    expect_err(&spec, "root contains itself", |e| {
        matches!(e, ReadError::DirectoryRevisited { .. })
    });
}

#[test]
fn directory_hardlink_and_cycle_are_refused() {
    let mut spec = sample();
    if let Kind::Dir(es) = &mut spec.nodes[0].kind {
        es.push((b"zsub-again", 1));
    }
    expect_err(&spec, "directory hardlink", |e| {
        matches!(e, ReadError::DirectoryRevisited { .. })
    });
    // Two directories containing each other, reached from the root.
    let mut nodes = vec![
        node(DIR, Kind::Dir(vec![(b"a", 1)])),
        node(DIR, Kind::Dir(vec![(b"b", 2)])),
        node(DIR, Kind::Dir(vec![(b"c", 1)])),
    ];
    nodes[1].raw_dots = Some((1, 0));
    nodes[2].raw_dots = Some((2, 1));
    let spec = Spec {
        nodes,
        shared: vec![],
        root: 0,
    };
    expect_err(&spec, "a/b/c == a", |e| {
        matches!(e, ReadError::DirectoryRevisited { .. })
    });
}

#[test]
fn wrong_dot_entries_are_refused() {
    let mut spec = sample();
    spec.nodes[1].raw_dots = Some((1, 1));
    expect_err(&spec, "'..' points at itself", |e| {
        matches!(e, ReadError::BadDotDotEntry { .. })
    });
    let mut spec = sample();
    spec.nodes[1].raw_dots = Some((0, 0));
    expect_err(&spec, "'.' points at root", |e| {
        matches!(e, ReadError::BadDotEntry { .. })
    });
}

#[test]
fn deep_nesting_is_limited_without_stack_overflow() {
    // 3000 nested directories: over the limit, refused, no recursion.
    let depth = 3000;
    let mut nodes = vec![];
    for i in 0..depth {
        let kids = if i + 1 < depth {
            vec![(&b"d"[..], i + 1)]
        } else {
            vec![]
        };
        let mut n = node(DIR, Kind::Dir(kids));
        n.compact = true;
        nodes.push(n);
    }
    let spec = Spec {
        nodes,
        shared: vec![],
        root: 0,
    };
    expect_err(&spec, "depth 3000", |e| {
        matches!(e, ReadError::DepthExceeded { .. })
    });
}

#[test]
fn huge_sizes_are_refused_without_allocating() {
    // An inline file claiming 2^60 bytes, a symlink claiming 1 MiB, a
    // directory claiming 4 GiB.
    for (idx, size) in [
        (10usize, 1u64 << 60),
        (5, 1 << 20),
        (1, u64::from(u32::MAX)),
    ] {
        let mut spec = sample();
        spec.nodes[idx].size_override = Some(size);
        let r = read_image(&build(&spec));
        assert!(r.is_err(), "size {size} on node {idx} accepted");
    }
    // The same on compact inodes (32-bit sizes).
    let mut spec = sample();
    spec.nodes[2].size_override = Some(u64::from(u32::MAX));
    assert!(read_image(&build(&spec)).is_err());
}

#[test]
fn shared_xattr_pointing_outside_is_refused() {
    let mut spec = sample();
    spec.shared.clear();
    spec.shared.push((6, b"x", vec![]));
    let mut img = build(&spec);
    // Point the superblock's xattr area far past the end.
    img[1024 + 44..1024 + 48].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    assert!(read_image(&img).is_err());
}

#[test]
fn amplification_through_shared_blocks_is_bounded() {
    // 200 directories whose listings are all the same big table of hardlinks
    // would be quadratic; here: many entries pointing at one inode is fine
    // (bounded by the image), and reading terminates quickly.
    let mut nodes = vec![
        node(DIR, Kind::Dir(vec![])),
        node(REG, Kind::File(b"x".to_vec())),
    ];
    let mut es = vec![];
    for i in 0..200 {
        let name: &'static [u8] = Box::leak(format!("f{i:04}").into_bytes().into_boxed_slice());
        es.push((name, 1));
    }
    nodes[0].kind = Kind::Dir(es);
    nodes[1].nlink = 200;
    let spec = Spec {
        nodes,
        shared: vec![],
        root: 0,
    };
    let t = read_image(&build(&spec)).unwrap();
    assert_eq!(t.entries(ROOT).len(), 200);
    assert_eq!(t.inodes.len(), 2);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let img = build(&with_stubs(sample()));
    assert!(read_image(&img).is_ok());
    for len in 0..img.len() {
        // Any prefix may or may not parse (trailing padding), but must not panic.
        let _ = read_image(&img[..len]);
        let _ = referenced_objects(&img[..len]);
    }
    // Cutting inside the metadata must fail.
    assert!(read_image(&img[..2048]).is_err());
    assert!(read_image(&img[..1100]).is_err());
}

#[test]
fn random_byte_flips_never_panic() {
    let img = build(&with_stubs(sample()));
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut ok = 0;
    let mut err = 0;
    for _ in 0..20_000 {
        let mut m = img.clone();
        let flips = 1 + rng.next() % 4;
        for _ in 0..flips {
            // Bias towards the metadata where the structure lives.
            let span = if rng.next() % 4 == 0 {
                m.len()
            } else {
                6000.min(m.len())
            };
            let at = (rng.next() % span as u64) as usize;
            m[at] ^= 1 << (rng.next() % 8);
        }
        match read_image(&m) {
            Ok(t) => {
                ok += 1;
                // Whatever was accepted is a structurally valid tree.
                t.validate().unwrap();
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(err > 0 && ok > 0, "ok {ok} err {err}");
}

/// `SEALROOT_WRITE_SEEDS=DIR cargo test --test reader_hostile write_fuzz_seeds`
/// writes the hand-built sample images as fuzz seeds (fuzz/seeds/erofs_read).
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("SEALROOT_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sample-stubs.img"), build(&with_stubs(sample()))).unwrap();
    std::fs::write(dir.join("sample.img"), build(&sample())).unwrap();
}
