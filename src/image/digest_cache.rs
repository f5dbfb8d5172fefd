//! The digest cache of incremental builds: a file's fs-verity digest from an
//! earlier build, reused without reading the file when nothing the kernel
//! reports about it has changed.
//!
//! Decisions (see also docs/sealing.md, "Incremental builds"):
//! - **Opt-in, in a file the caller names** (`--digest-cache FILE` on
//!   `sealctl build` and `sealctl mkcomposefs`). Never on by default: the
//!   `mkcomposefs` drop-in writes nothing its reference does not, a sealing
//!   step that trusts timestamps instead of bytes is a choice the builder
//!   makes, and the file is not part of the composefs-rs repository layout
//!   (so it is never put under `composefs/`; `$XDG_CACHE_HOME/sealroot/` is
//!   the suggested place). The file is as trusted as the tree itself:
//!   whoever can write it chooses digests. It is written with mode 0600.
//! - **Key** ([`FileKey`]): device, inode, size, mtime and ctime with
//!   nanoseconds, and the birth time (`statx` btime) where the filesystem
//!   has one. ctime cannot be set from user space, so content written with
//!   the mtime put back (`touch -d`, `utimensat`) still changes the key; a
//!   file replaced by a rename has another inode, and an inode number that
//!   was freed and handed out again has a new btime and ctime. Every field
//!   comes from the walk's one `statx` per entry (std's `DirEntry::metadata`
//!   asks for btime), so a hit costs no syscall beyond those a cold build
//!   makes; the inode generation (`FS_IOC_GETVERSION`) would need an open
//!   and an ioctl per file, which is most of what the cache saves.
//! - **Racy timestamps**: an entry is only kept, and only reused, if its
//!   mtime and ctime are both strictly older than the moment its build
//!   started minus [`RACY_MARGIN_SECS`] (2 s: coarse kernel clocks lag by a
//!   tick, some filesystems keep whole or even 2-second timestamps). A write
//!   after the build started gets a timestamp no older than that, so it can
//!   never leave a cached key unchanged. Files written just before a build
//!   are hashed again next time, until they have settled. A cache whose
//!   start time is later than now (the clock went back) is not used at all.
//! - **Format** (version [`FORMAT_VERSION`], little-endian): magic
//!   `SRDCACHE`, version u32, algorithm u16, digest size u16, start time
//!   (i64 s, u32 ns, u32 zero), entry count u64; then per entry dev, ino,
//!   size (u64), mtime, ctime, btime (i64 s + u32 ns each), flags u32 (bit 0:
//!   btime known), digest; then SHA-256 of everything before. Entries are
//!   sorted by (dev, ino), one per inode, so the same cache encodes to the
//!   same bytes. Read with [`fileio::read_bounded`] (at most
//!   [`MAX_CACHE_BYTES`]), written with [`fileio::write_atomic`].
//! - **Never trusted, never fatal**: a missing, unreadable, oversized,
//!   truncated, corrupt (checksum), other-version or other-algorithm cache
//!   is a [`CacheError`]; callers warn and build cold. A cache that cannot
//!   be saved is a warning too; the image is already built.
//! - **Only a speed-up**: a reused digest names an object; with an object
//!   store (`build`, `mkcomposefs --digest-store`) it is only reused if that
//!   object is already in the store (whose objects always have the content
//!   their name says), otherwise the file is read, hashed and copied as in a
//!   cold build, and the copy is checked against the digest. Files of 64
//!   bytes or less are inline and never looked up.
//! - **Not done**: `FS_IOC_MEASURE_VERITY` on files that already have
//!   fs-verity. The kernel reports the digest for the file's own block size
//!   and salt, which is composefs's digest only for 4096-byte blocks and no
//!   salt; telling which needs `FS_IOC_READ_VERITY_METADATA` as well, and
//!   this project's build host has no fs-verity to test it on.
//!
//! What the key cannot see (as for `make`, git's index or rsync): content
//! written through a shared writable mapping after its last page fault
//! updated the timestamps, a clock stepped back to exactly an old ctime,
//! and a filesystem changed beneath the kernel (raw device writes, a
//! filesystem without a change time such as FAT). Do not use the cache for
//! trees that anything writes that way while or between builds.

use std::collections::HashMap;
use std::fs::Metadata;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, HashAlgorithm};
use crate::image::fileio::{self, FileIoError};

/// Version of the file format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// First bytes of every cache file.
pub const MAGIC: [u8; 8] = *b"SRDCACHE";
/// Largest cache file read (about eleven million entries).
pub const MAX_CACHE_BYTES: u64 = 1 << 30;
/// Seconds an entry's mtime and ctime must be older than its build's start.
pub const RACY_MARGIN_SECS: i64 = 2;

const HEADER_LEN: usize = 40;
const CHECKSUM_LEN: usize = 32;
const KEY_LEN: usize = 3 * 8 + 3 * 12 + 4;
const FLAG_BTIME: u32 = 1;

/// A timestamp: seconds since the epoch and nanoseconds (`0..1e9`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Stamp {
    /// From `SystemTime` (times before the epoch too).
    pub fn from_system_time(t: SystemTime) -> Stamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Stamp {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let sec = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => Stamp { sec: -sec, nsec: 0 },
                    n => Stamp {
                        sec: -sec - 1,
                        nsec: 1_000_000_000 - n,
                    },
                }
            }
        }
    }

    /// The wall clock now (`CLOCK_REALTIME`, the clock file timestamps use).
    pub fn now() -> Stamp {
        Stamp::from_system_time(SystemTime::now())
    }

    fn from_parts(sec: i64, nsec: i64) -> Stamp {
        Stamp {
            sec,
            nsec: u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0),
        }
    }
}

/// What identifies one version of a file's content (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Stamp,
    pub ctime: Stamp,
    /// Birth time; `None` where the filesystem does not report one.
    pub btime: Option<Stamp>,
}

impl FileKey {
    /// The key of the file `meta` describes (from `lstat`/`statx`).
    pub fn of(meta: &Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: Stamp::from_parts(meta.mtime(), meta.mtime_nsec()),
            ctime: Stamp::from_parts(meta.ctime(), meta.ctime_nsec()),
            btime: meta.created().ok().map(Stamp::from_system_time),
        }
    }
}

/// Why a cache file was not used or not saved. Callers warn and go on.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading (including too large) or writing the file failed.
    #[error(transparent)]
    File(#[from] FileIoError),
    /// Not a cache file, or cut short.
    #[error("{path}: not a digest cache (bad magic or {len} bytes is too short)")]
    NotACache { path: PathBuf, len: usize },
    /// Written by another format version.
    #[error("{path}: digest cache format version {found}, this sealctl reads {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    /// Written for another fs-verity algorithm.
    #[error("{path}: digest cache holds {found} digests, this build uses {wanted}")]
    Algorithm {
        path: PathBuf,
        found: String,
        wanted: &'static str,
    },
    /// The length does not match the entry count.
    #[error("{path}: {len} bytes, but {count} entries need {expected}")]
    Length {
        path: PathBuf,
        len: usize,
        count: u64,
        expected: u64,
    },
    /// The trailing checksum does not match.
    #[error("{path}: checksum mismatch (damaged or cut short)")]
    Checksum { path: PathBuf },
    /// An entry no writer of this format makes.
    #[error("{path}: entry {index} is malformed: {what}")]
    Entry {
        path: PathBuf,
        index: u64,
        what: &'static str,
    },
    /// Made by a build that started later than now: the clock went back.
    #[error("{path}: made by a build at {}.{:09} s, later than now ({}.{:09} s): the clock went back", .taken_at.sec, .taken_at.nsec, .now.sec, .now.nsec)]
    FromTheFuture {
        path: PathBuf,
        taken_at: Stamp,
        now: Stamp,
    },
}

/// One file a scan found a digest for, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub key: FileKey,
    pub digest: Digest,
}

/// What a scan with a cache did: when it started (before its first
/// `stat`), every regular file over 64 bytes with its key and digest, and
/// how many digests came from the cache.
#[derive(Clone, Debug, Default)]
pub struct ScanRecord {
    pub started: Stamp,
    pub files: Vec<Observed>,
    /// Digests taken from the cache (their files were not read).
    pub reused: u64,
    /// Digests computed by reading the file.
    pub hashed: u64,
}

/// Hasher of the (device, inode) map: one multiply per word (FxHash's).
/// SipHash's flooding resistance buys nothing here (the cache file is
/// trusted input, and so are inode numbers) and cost 7 % of an unchanged
/// rebuild.
#[derive(Default)]
struct InodeHasher(u64);

impl Hasher for InodeHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type InodeMap = HashMap<(u64, u64), (FileKey, Digest), BuildHasherDefault<InodeHasher>>;

/// Digests by (device, inode), each with the full key it is valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestCache {
    algorithm: HashAlgorithm,
    taken_at: Stamp,
    entries: InodeMap,
}

impl DigestCache {
    /// An empty cache (a cold build).
    pub fn empty(algorithm: HashAlgorithm) -> DigestCache {
        DigestCache {
            algorithm,
            taken_at: Stamp::default(),
            entries: InodeMap::default(),
        }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// When the build this cache came from started.
    pub fn taken_at(&self) -> Stamp {
        self.taken_at
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key`'s timestamps are old enough to trust (see the module
    /// docs): both strictly before `taken_at - RACY_MARGIN_SECS`.
    pub fn settled(taken_at: Stamp, key: &FileKey) -> bool {
        let limit = Stamp {
            sec: taken_at.sec.saturating_sub(RACY_MARGIN_SECS),
            nsec: taken_at.nsec,
        };
        key.mtime < limit && key.ctime < limit
    }

    /// The digest recorded for exactly this key, if it may be reused.
    pub fn lookup(&self, key: &FileKey) -> Option<Digest> {
        let (k, d) = self.entries.get(&(key.dev, key.ino))?;
        (k == key && Self::settled(self.taken_at, k)).then_some(*d)
    }

    /// The cache a scan leaves: every settled file it saw, one entry per
    /// inode. Two links of one inode seen with different keys or digests
    /// (it changed during the scan) leave no entry.
    pub fn from_record(algorithm: HashAlgorithm, record: &ScanRecord) -> DigestCache {
        let mut entries = InodeMap::default();
        let mut conflicts = Vec::new();
        for o in &record.files {
            if o.digest.algorithm() != algorithm || !Self::settled(record.started, &o.key) {
                continue;
            }
            let id = (o.key.dev, o.key.ino);
            match entries.get(&id) {
                Some(e) if *e != (o.key, o.digest) => conflicts.push(id),
                Some(_) => {}
                None => {
                    entries.insert(id, (o.key, o.digest));
                }
            }
        }
        for id in conflicts {
            entries.remove(&id);
        }
        DigestCache {
            algorithm,
            taken_at: record.started,
            entries,
        }
    }

    /// Whether `self` holds exactly the entries of `other` (the file need
    /// not be rewritten: every entry is as valid under the older start).
    pub fn same_entries(&self, other: &DigestCache) -> bool {
        self.algorithm == other.algorithm && self.entries == other.entries
    }

    /// Read the cache at `path` for a build with `algorithm`. Any problem is
    /// an error the caller warns about and then builds without the cache;
    /// [`CacheError::File`] with [`FileIoError::Missing`] is the first build.
    pub fn load(path: &Path, algorithm: HashAlgorithm) -> Result<DigestCache, CacheError> {
        let bytes = fileio::read_bounded(path, MAX_CACHE_BYTES)?;
        let cache = Self::decode(path, &bytes, algorithm)?;
        let now = Stamp::now();
        if cache.taken_at > now {
            return Err(CacheError::FromTheFuture {
                path: path.to_path_buf(),
                taken_at: cache.taken_at,
                now,
            });
        }
        Ok(cache)
    }

    /// Parse a cache file's bytes (`path` only names it in errors).
    pub fn decode(
        path: &Path,
        bytes: &[u8],
        algorithm: HashAlgorithm,
    ) -> Result<DigestCache, CacheError> {
        let p = || path.to_path_buf();
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN || bytes[..8] != MAGIC {
            return Err(CacheError::NotACache {
                path: p(),
                len: bytes.len(),
            });
        }
        let mut r = Reader { bytes, at: 8 };
        let version = r.u32();
        if version != FORMAT_VERSION {
            return Err(CacheError::Version {
                path: p(),
                found: version,
            });
        }
        let alg_number = r.u16();
        let digest_len = r.u16();
        let found = HashAlgorithm::from_number(alg_number.into());
        if found != Some(algorithm) || usize::from(digest_len) != algorithm.digest_len() {
            return Err(CacheError::Algorithm {
                path: p(),
                found: found.map_or(format!("algorithm number {alg_number}"), |a| {
                    a.name().to_string()
                }),
                wanted: algorithm.name(),
            });
        }
        let taken_sec = r.i64();
        let taken_nsec = r.u32();
        let reserved = r.u32();
        let count = r.u64();
        let entry_len = (KEY_LEN + algorithm.digest_len()) as u64;
        let expected = count
            .checked_mul(entry_len)
            .and_then(|n| n.checked_add((HEADER_LEN + CHECKSUM_LEN) as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(CacheError::Length {
                path: p(),
                len: bytes.len(),
                count,
                expected: expected.unwrap_or(u64::MAX),
            });
        }
        let body_len = bytes.len() - CHECKSUM_LEN;
        if Sha256::digest(&bytes[..body_len]).as_slice() != &bytes[body_len..] {
            return Err(CacheError::Checksum { path: p() });
        }
        let bad = |index, what| CacheError::Entry {
            path: p(),
            index,
            what,
        };
        if taken_nsec >= 1_000_000_000 || reserved != 0 {
            return Err(bad(0, "header start time or reserved field out of range"));
        }
        let mut entries = InodeMap::with_capacity_and_hasher(count as usize, Default::default());
        let mut prev: Option<(u64, u64)> = None;
        for index in 0..count {
            let dev = r.u64();
            let ino = r.u64();
            let size = r.u64();
            let mut stamp = || Stamp {
                sec: r.i64(),
                nsec: r.u32(),
            };
            let (mtime, ctime, btime) = (stamp(), stamp(), stamp());
            let flags = r.u32();
            let digest = Digest::from_bytes(algorithm, r.take(algorithm.digest_len()))
                .ok_or_else(|| bad(index, "digest length"))?;
            if [mtime, ctime, btime]
                .iter()
                .any(|s| s.nsec >= 1_000_000_000)
            {
                return Err(bad(index, "nanoseconds out of range"));
            }
            if flags & !FLAG_BTIME != 0 || (flags & FLAG_BTIME == 0 && btime != Stamp::default()) {
                return Err(bad(index, "unknown flags"));
            }
            if prev.is_some_and(|p| p >= (dev, ino)) {
                return Err(bad(
                    index,
                    "entries not sorted by (device, inode), or repeated",
                ));
            }
            prev = Some((dev, ino));
            let key = FileKey {
                dev,
                ino,
                size,
                mtime,
                ctime,
                btime: (flags & FLAG_BTIME != 0).then_some(btime),
            };
            entries.insert((dev, ino), (key, digest));
        }
        Ok(DigestCache {
            algorithm,
            taken_at: Stamp {
                sec: taken_sec,
                nsec: taken_nsec,
            },
            entries,
        })
    }

    /// The file's bytes (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let entry_len = KEY_LEN + self.algorithm.digest_len();
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * entry_len + 32);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&u16::from(self.algorithm.number()).to_le_bytes());
        out.extend_from_slice(&(self.algorithm.digest_len() as u16).to_le_bytes());
        out.extend_from_slice(&self.taken_at.sec.to_le_bytes());
        out.extend_from_slice(&self.taken_at.nsec.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        let mut sorted: Vec<_> = self.entries.values().collect();
        sorted.sort_unstable_by_key(|(k, _)| (k.dev, k.ino));
        for (k, d) in sorted {
            out.extend_from_slice(&k.dev.to_le_bytes());
            out.extend_from_slice(&k.ino.to_le_bytes());
            out.extend_from_slice(&k.size.to_le_bytes());
            for s in [k.mtime, k.ctime, k.btime.unwrap_or_default()] {
                out.extend_from_slice(&s.sec.to_le_bytes());
                out.extend_from_slice(&s.nsec.to_le_bytes());
            }
            let flags = if k.btime.is_some() { FLAG_BTIME } else { 0 };
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(d.as_bytes());
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Write the cache to `path` atomically (mode 0600), creating its
    /// parent directory if needed.
    pub fn save(&self, path: &Path) -> Result<(), CacheError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| FileIoError::Io {
                op: "create directory",
                path: dir.to_path_buf(),
                error,
            })?;
        }
        fileio::write_atomic(path, &self.encode(), Some(0o600))?;
        Ok(())
    }
}

/// What an incremental build does with its cache file after the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The entries were the loaded ones: the file was left as it was.
    Unchanged,
    /// The file was (re)written with this many entries.
    Written(usize),
}

/// Save the cache `record` leaves to `path`, unless it holds exactly the
/// entries of `loaded` (then the file stays: it is as valid as before).
pub fn save_after_scan(
    path: &Path,
    loaded: &DigestCache,
    record: &ScanRecord,
) -> Result<SaveOutcome, CacheError> {
    let next = DigestCache::from_record(loaded.algorithm, record);
    if !loaded.is_empty() && next.same_entries(loaded) {
        return Ok(SaveOutcome::Unchanged);
    }
    next.save(path)?;
    Ok(SaveOutcome::Written(next.len()))
}

/// Cursor over a buffer whose length was checked before reading.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = self.bytes.get(self.at..self.at + n).unwrap_or(&[]);
        self.at += n;
        s
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().unwrap_or([0; N])
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(sec: i64) -> Stamp {
        Stamp { sec, nsec: 5 }
    }

    fn key(ino: u64) -> FileKey {
        FileKey {
            dev: 7,
            ino,
            size: 100,
            mtime: stamp(1000),
            ctime: stamp(1000),
            btime: Some(stamp(900)),
        }
    }

    fn digest(b: u8) -> Digest {
        Digest::from_bytes(HashAlgorithm::Sha256, &[b; 32]).unwrap()
    }

    fn cache_of(started: i64, files: &[(FileKey, Digest)]) -> DigestCache {
        let record = ScanRecord {
            started: stamp(started),
            files: files
                .iter()
                .map(|&(key, digest)| Observed { key, digest })
                .collect(),
            ..Default::default()
        };
        DigestCache::from_record(HashAlgorithm::Sha256, &record)
    }

    #[test]
    fn every_key_field_must_match() {
        let c = cache_of(2000, &[(key(1), digest(1))]);
        assert_eq!(c.lookup(&key(1)), Some(digest(1)));
        let changes: [fn(&mut FileKey); 8] = [
            |k| k.dev += 1,
            |k| k.ino += 1,
            |k| k.size += 1,
            |k| k.mtime.nsec += 1,
            |k| k.ctime.nsec += 1,
            |k| k.ctime.sec += 1,
            |k| k.btime = Some(stamp(901)),
            |k| k.btime = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut k = key(1);
            change(&mut k);
            assert_eq!(c.lookup(&k), None, "change {i}");
        }
    }

    /// Timestamps within 2 s of the build's start are never kept nor
    /// reused, whichever of mtime and ctime it is.
    #[test]
    fn racy_entries_are_dropped_and_never_reused() {
        let settled = key(1);
        let mut young_c = key(2);
        young_c.ctime = stamp(1998);
        let mut young_m = key(3);
        young_m.mtime = stamp(2001);
        let c = cache_of(
            2000,
            &[
                (settled, digest(1)),
                (young_c, digest(2)),
                (young_m, digest(3)),
            ],
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(&settled), Some(digest(1)));
        // Exactly at the limit is not "strictly older".
        let mut edge = key(4);
        edge.ctime = Stamp { sec: 1998, nsec: 5 };
        assert!(!DigestCache::settled(stamp(2000), &edge));
        edge.ctime.nsec = 4;
        assert!(DigestCache::settled(stamp(2000), &edge));
        // A decoded cache applies the rule again: a file edited by hand to
        // hold a young entry does not get it reused.
        let mut bytes = cache_of(2000, &[(young_c, digest(2))]).encode();
        assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN);
        let mut forged = cache_of(5000, &[(young_c, digest(2))]);
        forged.taken_at = stamp(2000);
        bytes = forged.encode();
        let back = DigestCache::decode(Path::new("c"), &bytes, HashAlgorithm::Sha256).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back.lookup(&young_c), None);
    }

    #[test]
    fn links_seen_with_different_keys_leave_no_entry() {
        let mut changed = key(1);
        changed.size = 101;
        let c = cache_of(
            2000,
            &[
                (key(1), digest(1)),
                (changed, digest(2)),
                (key(2), digest(3)),
            ],
        );
        assert_eq!(c.lookup(&key(1)), None);
        assert_eq!(c.lookup(&changed), None);
        assert_eq!(c.len(), 1);
        let c = cache_of(2000, &[(key(1), digest(1)), (key(1), digest(1))]);
        assert_eq!(c.lookup(&key(1)), Some(digest(1)));
    }

    #[test]
    fn encode_decode_round_trip_and_damage_is_refused() {
        let mut no_btime = key(9);
        no_btime.btime = None;
        let c = cache_of(
            2000,
            &[
                (key(3), digest(1)),
                (key(1), digest(2)),
                (no_btime, digest(3)),
            ],
        );
        let bytes = c.encode();
        let p = Path::new("cache");
        let back = DigestCache::decode(p, &bytes, HashAlgorithm::Sha256).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.encode(), bytes, "encoding is deterministic");
        assert!(matches!(
            DigestCache::decode(p, &bytes, HashAlgorithm::Sha512),
            Err(CacheError::Algorithm { .. })
        ));
        // Every single flipped byte is refused (magic, version, length or
        // checksum), never decoded into something else.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                DigestCache::decode(p, &b, HashAlgorithm::Sha256).is_err(),
                "byte {i}"
            );
        }
        for cut in [0, 7, HEADER_LEN, bytes.len() - 1] {
            assert!(DigestCache::decode(p, &bytes[..cut], HashAlgorithm::Sha256).is_err());
        }
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(matches!(
            DigestCache::decode(p, &v2, HashAlgorithm::Sha256),
            Err(CacheError::Version { found: 2, .. })
        ));
    }

    #[test]
    fn load_refuses_missing_oversized_and_future_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache");
        assert!(matches!(
            DigestCache::load(&path, HashAlgorithm::Sha256),
            Err(CacheError::File(FileIoError::Missing { .. }))
        ));
        let c = cache_of(2000, &[(key(1), digest(1))]);
        c.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(DigestCache::load(&path, HashAlgorithm::Sha256).unwrap(), c);
        let future = cache_of(Stamp::now().sec + 3600, &[]);
        future.save(&path).unwrap();
        assert!(matches!(
            DigestCache::load(&path, HashAlgorithm::Sha256),
            Err(CacheError::FromTheFuture { .. })
        ));
        // Sparse: no disk space, but larger than the limit.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_CACHE_BYTES + 1)
            .unwrap();
        assert!(matches!(
            DigestCache::load(&path, HashAlgorithm::Sha256),
            Err(CacheError::File(FileIoError::TooLarge { .. }))
        ));
    }

    #[test]
    fn an_unchanged_cache_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let record = ScanRecord {
            started: stamp(2000),
            files: vec![Observed {
                key: key(1),
                digest: digest(1),
            }],
            reused: 1,
            hashed: 0,
        };
        let loaded = DigestCache::from_record(HashAlgorithm::Sha256, &record);
        assert_eq!(
            save_after_scan(&path, &loaded, &record).unwrap(),
            SaveOutcome::Unchanged
        );
        assert!(!path.exists());
        let empty = DigestCache::empty(HashAlgorithm::Sha256);
        assert_eq!(
            save_after_scan(&path, &empty, &record).unwrap(),
            SaveOutcome::Written(1)
        );
        assert_eq!(
            DigestCache::load(&path, HashAlgorithm::Sha256).unwrap(),
            loaded
        );
    }

    #[test]
    fn stamps_before_the_epoch_order_correctly() {
        let t = UNIX_EPOCH - std::time::Duration::new(1, 250);
        let s = Stamp::from_system_time(t);
        assert_eq!(
            s,
            Stamp {
                sec: -2,
                nsec: 999_999_750
            }
        );
        assert!(s < Stamp::default());
    }
}
