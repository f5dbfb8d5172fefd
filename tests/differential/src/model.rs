//! The generator's own model of a filesystem tree, the seeded generator that
//! fills it, and its composefs dumpfile text.
//!
//! The model is independent of both writers under test: sealroot gets the
//! dumpfile text (through its own parser), composefs-rs gets the same tree
//! built through its public API (and, where its parser accepts the text, the
//! dumpfile too).

use std::fmt::Write as _;

/// splitmix64: tiny, deterministic, good enough to scatter tree shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5ea1_2007_d1ff_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Clone>(&mut self, s: &[T]) -> T {
        s[self.below(s.len() as u64) as usize].clone()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    pub fn digest(&mut self) -> [u8; 32] {
        let mut d = [0u8; 32];
        for b in &mut d {
            *b = self.next_u64() as u8;
        }
        d
    }
}

/// Metadata every inode has.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: u64,
    pub mtime_nsec: u32,
    /// Unique names, in generation order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A regular file's content.
#[derive(Clone, Debug)]
pub enum Content {
    /// Stored in the image (possibly empty). `digest` is a DIGEST field the
    /// dumpfile carries anyway; the C writer ignores it for inline files.
    Inline {
        data: Vec<u8>,
        digest: Option<[u8; 32]>,
    },
    /// Size > 0, PAYLOAD = the object path of `object`; with `verity`, DIGEST
    /// = `object` too (the metacopy xattr carries it).
    External {
        size: u64,
        object: [u8; 32],
        verity: bool,
    },
    /// Size > 0 without content, payload or digest.
    Sparse { size: u64 },
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// Entries sorted by name bytes, unique.
    Dir(Vec<(Vec<u8>, usize)>),
    File(Content),
    Symlink(Vec<u8>),
    /// rdev 0 is an overlayfs whiteout.
    Chr(u32),
    Blk(u32),
    Fifo,
    Sock,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

/// Node 0 is the root directory. Leaf nodes may be named by several entries
/// (hard links); directories by exactly one.
#[derive(Clone, Debug)]
pub struct Model {
    pub nodes: Vec<Node>,
}

impl Model {
    pub fn entries(&self, dir: usize) -> &[(Vec<u8>, usize)] {
        match &self.nodes[dir].kind {
            Kind::Dir(e) => e,
            _ => &[],
        }
    }

    /// Number of entries naming each node (the root counts 1).
    pub fn link_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.nodes.len()];
        c[0] = 1;
        for n in &self.nodes {
            if let Kind::Dir(e) = &n.kind {
                for (_, id) in e {
                    c[*id] += 1;
                }
            }
        }
        c
    }

    /// Whether composefs-rs's dumpfile parser accepts this tree's text (its
    /// input limits are stricter than the format's: inline content up to
    /// 512 bytes, symlink targets up to 1024, no DIGEST on inline files).
    pub fn within_composefs_rs_parser_limits(&self) -> bool {
        self.nodes.iter().all(|n| match &n.kind {
            Kind::File(Content::Inline { data, digest }) => data.len() <= 512 && digest.is_none(),
            Kind::Symlink(t) => t.len() <= 1024,
            _ => true,
        })
    }

    pub fn has_whiteout(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.kind, Kind::Chr(0)))
    }
}

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

pub fn type_bits(k: &Kind) -> u32 {
    match k {
        Kind::Dir(_) => S_IFDIR,
        Kind::File(_) => S_IFREG,
        Kind::Symlink(_) => S_IFLNK,
        Kind::Chr(_) => S_IFCHR,
        Kind::Blk(_) => S_IFBLK,
        Kind::Fifo => S_IFIFO,
        Kind::Sock => S_IFSOCK,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `xx/yyyy…`: where an object with this digest lives in the store.
pub fn object_path(d: &[u8; 32]) -> String {
    let h = hex(d);
    format!("{}/{}", &h[..2], &h[2..])
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

/// Longest path the generator writes (the format allows PATH_MAX - 1).
const MAX_PATH: usize = 4000;

/// Per-tree knobs, drawn once so trees differ in character (wide, deep,
/// xattr-heavy, link-heavy...).
struct Profile {
    entries: u64,
    p_dir: u64,
    p_link: u64,
    p_special: u64,
    p_xattrs: u64,
    heavy_xattrs: bool,
    deep: bool,
    long_names: u64,
    weird_names: u64,
    odd_mtimes: u64,
    mtime_base: (u64, u32),
    /// Stay within composefs-rs's dumpfile reader limits, so its reader is
    /// cross-checked against its tree API on this tree too.
    reader_limits: bool,
    /// Shared pools so identical (name, value) pairs recur and get shared.
    xattr_names: Vec<Vec<u8>>,
    xattr_values: Vec<Vec<u8>>,
}

const PERMS: [u32; 12] = [
    0o644, 0o755, 0o600, 0o700, 0o444, 0o4755, 0o2755, 0o1777, 0o6755, 0o7777, 0, 0o7000,
];
const IDS: [u32; 8] = [0, 1, 1000, 65534, 65535, 65536, 0x7fff_ffff, u32::MAX];
const MTIMES: [u64; 8] = [
    0,
    1,
    1_700_000_000,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    253_402_300_799, // 9999-12-31
    i64::MAX as u64,
];
const NSECS: [u32; 5] = [0, 1, 500_000_000, 999_999_999, 123_456_789];

/// Sizes of inline (in-image) files: around the 64-byte scan threshold,
/// half a block (the tail limit) and a block.
const INLINE_SIZES: [usize; 20] = [
    0, 1, 2, 3, 4, 63, 64, 65, 100, 511, 512, 1000, 2047, 2048, 2049, 3000, 4095, 4096, 4097, 5000,
];

/// Sizes of external files: the chunk size is the smallest power of two
/// ≥ size (at least a block, at most 2^43), so up to 1024 chunks.
const EXTERNAL_SIZES: [u64; 22] = [
    1,
    63,
    64,
    65,
    4095,
    4096,
    4097,
    8192,
    1 << 20,
    (1 << 20) + 1,
    u32::MAX as u64,
    1 << 32,
    (1 << 32) + 1,
    1 << 43,
    (1 << 43) + 1,
    3 << 43,
    100 << 43,
    511 << 43,
    (1000 << 43) + 5,
    1023 << 43,
    (1023 << 43) + 1,
    1 << 53,
];

/// Symlink target lengths: short, around the 1024 / 2048 marks and up to
/// PATH_MAX - 1, including lengths that push inode + target past a block.
const TARGET_LENS: [usize; 17] = [
    1, 2, 10, 63, 64, 100, 255, 1023, 1024, 1025, 2048, 3000, 4000, 4030, 4063, 4064, 4095,
];

const XATTR_NAMES: [&[u8]; 21] = [
    b"user.a",
    b"user.mime_type",
    b"user.checksum",
    b"user.",
    b"security.selinux",
    b"security.ima",
    b"security.capability",
    b"security.evm",
    b"trusted.md5",
    b"trusted.overlay.opaque",
    b"trusted.overlay.redirect",
    b"trusted.overlay.overlay.x",
    b"trusted.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"lustre.lov",
    b"system.other",
    b"user.with=equals and spaces",
    b"user.overlay.opaque",
    b"user.overlay.whiteouts",
    b"trusted.overlay.whiteout",
];

fn gen_profile(rng: &mut Rng) -> Profile {
    let entries = match rng.below(100) {
        0..=2 => 0,
        3..=40 => rng.range(1, 20),
        41..=85 => rng.range(20, 80),
        _ => rng.range(80, 300),
    };
    let heavy_xattrs = rng.chance(15);
    let mut xattr_names: Vec<Vec<u8>> = Vec::new();
    for _ in 0..rng.range(2, 8) {
        xattr_names.push(rng.pick(&XATTR_NAMES).to_vec());
    }
    for _ in 0..rng.range(0, 3) {
        // Random names, some as long as the format allows (255 bytes).
        let prefix = rng.pick(&[&b"user."[..], b"trusted.", b"security.", b""]);
        let len = if rng.chance(20) {
            255 - prefix.len()
        } else {
            rng.range(1, 30) as usize
        };
        let mut n = prefix.to_vec();
        n.extend(gen_bytes_no_nul(rng, len));
        if n.is_empty() {
            n.push(b'k');
        }
        xattr_names.push(n);
    }
    let mut xattr_values: Vec<Vec<u8>> = vec![Vec::new(), b"y".to_vec()];
    for _ in 0..rng.range(1, 6) {
        let len = pick_value_len(rng, heavy_xattrs);
        xattr_values.push(rng.bytes(len));
    }
    xattr_values.push(b"system_u:object_r:usr_t:s0".to_vec());
    Profile {
        entries,
        p_dir: rng.range(5, 35),
        p_link: if rng.chance(50) { rng.range(3, 25) } else { 0 },
        p_special: rng.range(0, 30),
        p_xattrs: if heavy_xattrs {
            rng.range(40, 90)
        } else {
            rng.range(0, 40)
        },
        heavy_xattrs,
        deep: rng.chance(20),
        long_names: if rng.chance(25) { rng.range(5, 50) } else { 0 },
        weird_names: if rng.chance(40) { rng.range(5, 40) } else { 0 },
        odd_mtimes: rng.pick(&[0, 0, 5, 20, 60, 100]),
        mtime_base: (rng.pick(&MTIMES), rng.pick(&NSECS)),
        reader_limits: rng.chance(30),
        xattr_names,
        xattr_values,
    }
}

fn pick_value_len(rng: &mut Rng, heavy: bool) -> usize {
    let small = [0usize, 1, 2, 3, 4, 5, 8, 16, 32, 52, 100];
    let large = [255usize, 256, 300, 500, 1000, 2000, 3000, 4000];
    if rng.chance(if heavy { 50 } else { 15 }) {
        rng.pick(&large)
    } else {
        rng.pick(&small)
    }
}

fn gen_bytes_no_nul(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| match rng.next_u64() as u8 {
            0 => b'0',
            b => b,
        })
        .collect()
}

fn gen_name(rng: &mut Rng, p: &Profile, at_root: bool, room: usize) -> Vec<u8> {
    const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
    const WEIRD: &[u8] = b" \n\t\r\\=@-#%\"'*?[]{}~:;,!$&()+<>|`^\x01\x7f\x80\xc3\xa9\xff";
    let max = room.min(255);
    let r = rng.below(100);
    let mut name: Vec<u8> = if at_root && r < 15 {
        // Names of the root whiteout stubs: the writer skips taken ones.
        format!("{:02x}", rng.below(256)).into_bytes()
    } else if r < 15 + p.long_names {
        let len = if rng.chance(50) {
            max
        } else {
            rng.range(max.min(100) as u64, max as u64) as usize
        };
        (0..len).map(|_| rng.pick(PLAIN)).collect()
    } else if r < 15 + p.long_names + p.weird_names {
        let len = rng.range(1, 20) as usize;
        (0..len)
            .map(|_| {
                if rng.chance(50) {
                    rng.pick(WEIRD)
                } else {
                    rng.pick(PLAIN)
                }
            })
            .collect()
    } else if r < 18 + p.long_names + p.weird_names {
        rng.pick(&[&b"-"[..], b"...", b".x", b"@", b"="]).to_vec()
    } else {
        let len = rng.range(1, 12) as usize;
        (0..len).map(|_| rng.pick(PLAIN)).collect()
    };
    name.truncate(max.max(1));
    if name == b"." || name == b".." || name.is_empty() {
        name = b"dot".to_vec();
    }
    name
}

fn gen_meta(rng: &mut Rng, p: &Profile) -> Meta {
    let perm = if rng.chance(70) {
        rng.pick(&PERMS[..4])
    } else if rng.chance(70) {
        rng.pick(&PERMS)
    } else {
        rng.below(0o10000) as u32
    };
    let id = |rng: &mut Rng| {
        if rng.chance(80) {
            0
        } else if rng.chance(80) {
            rng.pick(&IDS)
        } else {
            rng.next_u64() as u32
        }
    };
    let uid = id(rng);
    let gid = id(rng);
    let (mtime_sec, mtime_nsec) = if rng.chance(p.odd_mtimes) {
        (
            if rng.chance(50) {
                rng.pick(&MTIMES)
            } else {
                rng.below(1 << 34)
            },
            if rng.chance(50) {
                rng.pick(&NSECS)
            } else {
                rng.below(1_000_000_000) as u32
            },
        )
    } else {
        p.mtime_base
    };
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if rng.chance(p.p_xattrs) {
        let n = match rng.below(100) {
            0..=69 => rng.range(1, 3),
            70..=94 => rng.range(4, 12),
            _ => rng.range(13, 40),
        };
        // Keep one inode's xattrs within a few KB over 4 KB at most.
        let mut budget: usize = if p.heavy_xattrs { 12_000 } else { 6_000 };
        for _ in 0..n {
            let name = if rng.chance(75) {
                rng.pick(&p.xattr_names)
            } else {
                let mut n = rng
                    .pick(&[&b"user."[..], b"trusted.", b"security."])
                    .to_vec();
                n.extend(format!("k{}", rng.below(50)).as_bytes());
                n
            };
            if xattrs.iter().any(|(k, _)| *k == name) {
                continue;
            }
            let value = if rng.chance(70) {
                rng.pick(&p.xattr_values)
            } else {
                let len = pick_value_len(rng, p.heavy_xattrs);
                rng.bytes(len)
            };
            let cost = 4 + name.len() + value.len() + 3;
            if cost > budget {
                continue;
            }
            budget -= cost;
            xattrs.push((name, value));
        }
    }
    Meta {
        perm,
        uid,
        gid,
        mtime_sec,
        mtime_nsec,
        xattrs,
    }
}

fn gen_leaf_kind(rng: &mut Rng, p: &Profile) -> Kind {
    if rng.chance(p.p_special) {
        let any = rng.next_u64() as u32;
        return match rng.below(6) {
            0 => Kind::Chr(0),
            1 => Kind::Chr(rng.pick(&[1, 0x0801, 0xffff, 0x1_0000, u32::MAX, any])),
            2 => Kind::Blk(rng.pick(&[1, 0x0801, 0xfd00, u32::MAX, any])),
            3 => Kind::Fifo,
            4 => Kind::Sock,
            _ => Kind::Chr(0),
        };
    }
    match rng.below(100) {
        0..=44 => {
            let mut len = if rng.chance(50) {
                rng.pick(&INLINE_SIZES)
            } else {
                rng.range(0, 80) as usize
            };
            if p.reader_limits {
                len = len.min(512);
            }
            let digest = if len > 0 && !p.reader_limits && rng.chance(5) {
                Some(rng.digest())
            } else {
                None
            };
            Kind::File(Content::Inline {
                data: rng.bytes(len),
                digest,
            })
        }
        45..=74 => {
            let size = if rng.chance(60) {
                rng.pick(&EXTERNAL_SIZES)
            } else {
                rng.range(1, 1 << 30)
            };
            Kind::File(Content::External {
                size,
                object: rng.digest(),
                verity: rng.chance(80),
            })
        }
        75..=79 => Kind::File(Content::Sparse {
            size: rng.pick(&EXTERNAL_SIZES),
        }),
        _ => {
            let mut len = if rng.chance(40) {
                rng.pick(&TARGET_LENS)
            } else {
                rng.range(1, 60) as usize
            };
            if p.reader_limits {
                len = len.min(1024);
            }
            let target: Vec<u8> = (0..len)
                .map(|i| {
                    if i % 7 == 3 {
                        b'/'
                    } else {
                        match rng.next_u64() as u8 {
                            0 => b'.',
                            b => b,
                        }
                    }
                })
                .collect();
            Kind::Symlink(target)
        }
    }
}

/// Generate the tree for `seed`.
pub fn generate(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let p = gen_profile(&mut rng);
    let mut root_meta = gen_meta(&mut rng, &p);
    if rng.chance(30) {
        // The root's SELinux label is copied to the whiteout stubs.
        root_meta
            .xattrs
            .retain(|(k, _)| k.as_slice() != b"security.selinux");
        let v = rng.pick(&p.xattr_values);
        root_meta.xattrs.push((b"security.selinux".to_vec(), v));
    }
    let mut m = Model {
        nodes: vec![Node {
            meta: root_meta,
            kind: Kind::Dir(Vec::new()),
        }],
    };
    // (node, path length) of every directory.
    let mut dirs: Vec<(usize, usize)> = vec![(0, 0)];
    let mut leaves: Vec<usize> = Vec::new();

    // A deep chain of directories (short names, so a few hundred levels
    // fit in a path), with leaves along the way.
    if rng.chance(10) {
        let (mut dir, mut len) = rng.pick(&dirs);
        for level in 0..rng.range(20, 400) {
            let name = format!("{}", level % 10).into_bytes();
            if len + 1 + name.len() > MAX_PATH {
                break;
            }
            let Kind::Dir(entries) = &m.nodes[dir].kind else {
                unreachable!()
            };
            let Err(pos) = entries.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) else {
                break;
            };
            let meta = gen_meta(&mut rng, &p);
            m.nodes.push(Node {
                meta,
                kind: Kind::Dir(Vec::new()),
            });
            let id = m.nodes.len() - 1;
            let Kind::Dir(entries) = &mut m.nodes[dir].kind else {
                unreachable!()
            };
            entries.insert(pos, (name, id));
            len += 2;
            dir = id;
            if rng.chance(10) {
                let meta = gen_meta(&mut rng, &p);
                let kind = gen_leaf_kind(&mut rng, &p);
                m.nodes.push(Node { meta, kind });
                let leaf = m.nodes.len() - 1;
                let Kind::Dir(entries) = &mut m.nodes[dir].kind else {
                    unreachable!()
                };
                entries.push((b"f".to_vec(), leaf));
                leaves.push(leaf);
            }
        }
        dirs.push((dir, len));
    }

    for _ in 0..p.entries {
        let (dir, dir_len) = if p.deep && rng.chance(70) {
            *dirs.last().unwrap()
        } else {
            rng.pick(&dirs)
        };
        let room = MAX_PATH.saturating_sub(dir_len + 1);
        if room == 0 {
            continue;
        }
        let name = gen_name(&mut rng, &p, dir == 0, room);
        let Kind::Dir(entries) = &m.nodes[dir].kind else {
            unreachable!()
        };
        let Err(pos) = entries.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) else {
            continue; // name taken
        };
        let path_len = dir_len + 1 + name.len();
        let target = if !leaves.is_empty() && rng.chance(p.p_link) {
            // Hard link to an existing non-directory (never a whiteout:
            // see the exclusions in main.rs).
            let t = rng.pick(&leaves);
            if matches!(m.nodes[t].kind, Kind::Chr(0)) {
                continue;
            }
            t
        } else {
            let kind = if rng.chance(p.p_dir) {
                Kind::Dir(Vec::new())
            } else {
                gen_leaf_kind(&mut rng, &p)
            };
            let meta = gen_meta(&mut rng, &p);
            m.nodes.push(Node { meta, kind });
            let id = m.nodes.len() - 1;
            if matches!(m.nodes[id].kind, Kind::Dir(_)) {
                dirs.push((id, path_len));
            } else {
                leaves.push(id);
            }
            id
        };
        let Kind::Dir(entries) = &mut m.nodes[dir].kind else {
            unreachable!()
        };
        entries.insert(pos, (name, target));
    }

    // A directory whose entries fill exact byte counts: whole blocks of
    // exactly 4096 bytes, then a tail of a chosen size around the inline
    // limit (half a block) or none.
    if rng.chance(12) {
        sized_dir(&mut m, &mut rng, &p);
    }

    // Wide directories: enough entries (some long names) to need several
    // directory blocks, or a tail just around half a block.
    if rng.chance(8) {
        let (dir, dir_len) = rng.pick(&dirs);
        let n = rng.range(20, 400);
        for i in 0..n {
            let name_len = if rng.chance(30) {
                255
            } else {
                rng.range(1, 40) as usize
            };
            let room = MAX_PATH.saturating_sub(dir_len + 1);
            if room < 8 {
                break;
            }
            let mut name = format!("w{i:05}").into_bytes();
            name.resize(name_len.clamp(6, room.min(255)), b'x');
            let meta = gen_meta(&mut rng, &p);
            let kind = gen_leaf_kind(&mut rng, &p);
            m.nodes.push(Node { meta, kind });
            let id = m.nodes.len() - 1;
            let Kind::Dir(entries) = &mut m.nodes[dir].kind else {
                unreachable!()
            };
            if let Err(pos) = entries.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) {
                entries.insert(pos, (name, id));
            } else {
                m.nodes.pop();
            }
        }
    }
    let mut m = drop_orphans(m);
    avoid_marker_collisions(&mut m);
    avoid_stub_lookalikes(&mut m);
    m
}

/// composefs-rs 0.9.4 adds its 256 root whiteout stubs (`00`..`ff`) to the
/// tree before it escapes whiteouts, and then tells a stub from an input
/// whiteout at the root only by looks: a two-hex-digit name, mode 0644, the
/// root's owner and mtime, and no xattrs but the root's `security.selinux`.
/// An input whiteout that looks like that is left unescaped (a bare
/// character device in the image). The C writer escapes every input
/// whiteout first and adds the stubs afterwards, skipping taken names
/// (`rewrite_tree_for_erofs`: `rewrite_tree_node_for_erofs` then
/// `add_overlay_whiteouts`), so it escapes such an entry like any other.
/// The generator makes those entries differ from a stub (mode 0600);
/// deviations.rs pins sealroot's C behaviour.
fn avoid_stub_lookalikes(m: &mut Model) {
    let root = m.nodes[0].meta.clone();
    let root_selinux: Vec<(Vec<u8>, Vec<u8>)> = root
        .xattrs
        .iter()
        .filter(|(k, _)| k.as_slice() == b"security.selinux")
        .cloned()
        .collect();
    let ids: Vec<usize> = m
        .entries(0)
        .iter()
        .filter(|(name, _)| {
            name.len() == 2 && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        })
        .map(|(_, id)| *id)
        .collect();
    for id in ids {
        let n = &mut m.nodes[id];
        if matches!(n.kind, Kind::Chr(0))
            && n.meta.perm == 0o644
            && n.meta.uid == root.uid
            && n.meta.gid == root.gid
            && (n.meta.mtime_sec, n.meta.mtime_nsec) == (root.mtime_sec, root.mtime_nsec)
            && (n.meta.xattrs.is_empty() || n.meta.xattrs == root_selinux)
        {
            n.meta.perm = 0o600;
        }
    }
}

/// Xattrs the writer itself sets on whiteouts (`trusted.overlay.overlay.
/// whiteout`, `user.overlay.whiteout`) and on their directories
/// (`…whiteouts`, and in version 1 `…opaque`). The C writer's
/// `lcfs_node_set_xattr` replaces a value the input already had under that
/// name; composefs-rs 0.9.4 appends a second entry with the same name. So
/// such inputs are not generated (deviations.rs pins sealroot's C
/// behaviour): the input names that escape to a marker name are dropped
/// from whiteouts and from directories holding one.
fn avoid_marker_collisions(m: &mut Model) {
    const ON_WHITEOUT: [&[u8]; 2] = [b"trusted.overlay.whiteout", b"user.overlay.whiteout"];
    const ON_PARENT: [&[u8]; 4] = [
        b"trusted.overlay.whiteouts",
        b"user.overlay.whiteouts",
        b"trusted.overlay.opaque",
        b"user.overlay.opaque",
    ];
    for d in 0..m.nodes.len() {
        let has_whiteout = m
            .entries(d)
            .iter()
            .any(|(_, c)| matches!(m.nodes[*c].kind, Kind::Chr(0)));
        if has_whiteout {
            m.nodes[d]
                .meta
                .xattrs
                .retain(|(k, _)| !ON_PARENT.contains(&k.as_slice()));
        }
        if matches!(m.nodes[d].kind, Kind::Chr(0)) {
            m.nodes[d]
                .meta
                .xattrs
                .retain(|(k, _)| !ON_WHITEOUT.contains(&k.as_slice()));
        }
    }
}

/// Name lengths (1..=255) whose directory entries (12 bytes + name) add up
/// to exactly `bytes` (at least 17 per entry, so names have room for an
/// index that keeps them in order).
fn fill(bytes: usize) -> Vec<usize> {
    if bytes == 0 {
        return Vec::new();
    }
    let n = bytes.div_ceil(267);
    let (base, extra) = (bytes / n, bytes % n);
    assert!(base >= 17, "cannot fill {bytes} bytes");
    (0..n).map(|i| base + usize::from(i < extra) - 12).collect()
}

fn sized_dir(m: &mut Model, rng: &mut Rng, p: &Profile) {
    let blocks = rng.below(3) as usize;
    let tail = rng.pick(&[0usize, 2047, 2048, 2049, 2100, 3000, 4096]);
    let dots = 13 + 14; // "." and ".."
    let mut lens = Vec::new();
    if blocks == 0 {
        lens.extend(fill(tail.max(dots + 17) - dots));
    } else {
        lens.extend(fill(4096 - dots));
        for _ in 1..blocks {
            lens.extend(fill(4096));
        }
        lens.extend(fill(tail));
    }
    let meta = gen_meta(rng, p);
    m.nodes.push(Node {
        meta,
        kind: Kind::Dir(Vec::new()),
    });
    let dir = m.nodes.len() - 1;
    let name = format!("sized-{blocks}-{tail}").into_bytes();
    let Kind::Dir(root) = &mut m.nodes[0].kind else {
        unreachable!()
    };
    match root.binary_search_by(|(n, _)| n.as_slice().cmp(&name)) {
        Ok(_) => {
            m.nodes.pop();
            return;
        }
        Err(pos) => root.insert(pos, (name, dir)),
    }
    let mut entries = Vec::new();
    for (i, len) in lens.into_iter().enumerate() {
        let mut n = format!("s{i:04}").into_bytes();
        n.resize(len, b'x');
        let meta = gen_meta(rng, p);
        let kind = gen_leaf_kind(rng, p);
        m.nodes.push(Node { meta, kind });
        entries.push((n, m.nodes.len() - 1));
    }
    m.nodes[dir].kind = Kind::Dir(entries);
}

/// Remove nodes no entry names (a wide-directory name clash can leave one).
fn drop_orphans(mut m: Model) -> Model {
    let counts = m.link_counts();
    if counts.iter().all(|&c| c > 0) {
        return m;
    }
    let mut remap = vec![usize::MAX; m.nodes.len()];
    let mut next = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 {
            remap[i] = next;
            next += 1;
        }
    }
    let mut nodes = Vec::with_capacity(next);
    for (i, mut n) in m.nodes.drain(..).enumerate() {
        if counts[i] == 0 {
            continue;
        }
        if let Kind::Dir(e) = &mut n.kind {
            for (_, id) in e.iter_mut() {
                *id = remap[*id];
            }
        }
        nodes.push(n);
    }
    Model { nodes }
}

// ---------------------------------------------------------------------------
// Dumpfile text
// ---------------------------------------------------------------------------

/// Escape a field: printable ASCII as is, everything else (space, controls,
/// non-ASCII, `\`) escaped; `=` too in xattr names; an empty field is `-`
/// and a lone `-` is escaped (except for xattr values, where both are
/// literal).
fn escape(out: &mut String, s: &[u8], field: Field) {
    if field != Field::XattrValue {
        if s.is_empty() {
            out.push('-');
            return;
        }
        if s == b"-" {
            out.push_str("\\x2d");
            return;
        }
    }
    for &b in s {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'=' if field == Field::XattrName => out.push_str("\\x3d"),
            0x21..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Plain,
    XattrName,
    XattrValue,
}

/// The model as a dumpfile: depth-first, entries in name order, the first
/// entry of a hard-linked inode defines it and later ones are `@` links to
/// it (the order `mkcomposefs`/`composefs-info dump` write). NLINK of a
/// non-directory is its number of entries; directories get an arbitrary
/// NLINK (every writer recomputes it as 2 + subdirectories).
pub fn dumpfile(m: &Model) -> String {
    let counts = m.link_counts();
    let mut first_path: Vec<Option<Vec<u8>>> = vec![None; m.nodes.len()];
    let mut out = String::new();
    line(&mut out, m, 0, b"/", &counts);
    // Explicit stack of (dir, path, next entry index).
    let mut stack: Vec<(usize, Vec<u8>, usize)> = vec![(0, Vec::new(), 0)];
    while let Some((dir, path, i)) = stack.pop() {
        let entries = m.entries(dir);
        let Some((name, id)) = entries.get(i) else {
            continue;
        };
        stack.push((dir, path.clone(), i + 1));
        let mut p = path.clone();
        p.push(b'/');
        p.extend_from_slice(name);
        if let Some(target) = &first_path[*id] {
            let n = &m.nodes[*id];
            escape(&mut out, &p, Field::Plain);
            let _ = write!(
                out,
                " 0 @{:o} 0 0 0 0 0.0 ",
                type_bits(&n.kind) | n.meta.perm
            );
            escape(&mut out, target, Field::Plain);
            out.push_str(" - -\n");
            continue;
        }
        line(&mut out, m, *id, &p, &counts);
        if matches!(m.nodes[*id].kind, Kind::Dir(_)) {
            stack.push((*id, p, 0));
        } else {
            first_path[*id] = Some(p);
        }
    }
    out
}

fn line(out: &mut String, m: &Model, id: usize, path: &[u8], counts: &[u32]) {
    let n = &m.nodes[id];
    let mode = type_bits(&n.kind) | n.meta.perm;
    let (size, nlink, rdev, payload, content, digest): (u64, u32, u32, Vec<u8>, Vec<u8>, String) =
        match &n.kind {
            Kind::Dir(e) => (
                0,
                // Deliberately not 2 + subdirs now and then.
                2 + e.len() as u32 % 3,
                0,
                vec![],
                vec![],
                String::new(),
            ),
            Kind::File(Content::Inline { data, digest }) => (
                data.len() as u64,
                counts[id],
                0,
                vec![],
                data.clone(),
                digest.map(|d| hex(&d)).unwrap_or_default(),
            ),
            Kind::File(Content::External {
                size,
                object,
                verity,
            }) => (
                *size,
                counts[id],
                0,
                object_path(object).into_bytes(),
                vec![],
                if *verity { hex(object) } else { String::new() },
            ),
            Kind::File(Content::Sparse { size }) => {
                (*size, counts[id], 0, vec![], vec![], String::new())
            }
            Kind::Symlink(t) => (
                t.len() as u64,
                counts[id],
                0,
                t.clone(),
                vec![],
                String::new(),
            ),
            Kind::Chr(r) | Kind::Blk(r) => (0, counts[id], *r, vec![], vec![], String::new()),
            Kind::Fifo | Kind::Sock => (0, counts[id], 0, vec![], vec![], String::new()),
        };
    escape(out, path, Field::Plain);
    let _ = write!(
        out,
        " {size} {mode:o} {nlink} {} {} {rdev} {}.{} ",
        n.meta.uid, n.meta.gid, n.meta.mtime_sec, n.meta.mtime_nsec
    );
    escape(out, &payload, Field::Plain);
    out.push(' ');
    escape(out, &content, Field::Plain);
    out.push(' ');
    escape(out, digest.as_bytes(), Field::Plain);
    for (k, v) in &n.meta.xattrs {
        out.push(' ');
        escape(out, k, Field::XattrName);
        out.push('=');
        escape(out, v, Field::XattrValue);
    }
    out.push('\n');
}
