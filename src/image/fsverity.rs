//! Userspace fs-verity file digests, identical to what the kernel's
//! `FS_IOC_MEASURE_VERITY` reports for a file with verity enabled using
//! 4096-byte Merkle blocks and no salt (the only parameters composefs uses).
//!
//! Contract:
//! - [`digest_bytes`], [`digest_reader`] and [`digest_file`] all return the
//!   same [`Digest`] for the same content; [`digest_file`] hashes the Merkle
//!   leaves of large files on all cores and reads with `pread`, so it never
//!   moves the file's offset.
//! - [`MerkleHasher`] is the streaming form: feed bytes in any pieces, then
//!   [`MerkleHasher::finish`]. Memory is bounded by one block per tree level.
//!
//! Kernel facts relied on (Documentation/filesystems/fsverity.rst):
//! - The data is split into 4096-byte blocks, the last one zero-padded; each
//!   block is hashed. The hashes of one level are concatenated and packed into
//!   4096-byte blocks (last one zero-padded), which are hashed to form the next
//!   level, until a level consists of a single hash: the root hash. A file of
//!   exactly one block has that block's hash as its root. An empty file has an
//!   all-zero root hash.
//! - The file digest is the hash of the 256-byte `struct fsverity_descriptor`:
//!   `version` u8 = 1, `hash_algorithm` u8 (1 = SHA-256, 2 = SHA-512),
//!   `log_blocksize` u8 = 12, `salt_size` u8 = 0, `__reserved_0x04` le32 = 0,
//!   `data_size` le64, `root_hash[64]` (zero-padded after the digest),
//!   `salt[32]`, `__reserved[144]`, all zero here.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use sha2::digest::Digest as _;
use sha2::{Sha256, Sha512};

use crate::digest::{Digest, HashAlgorithm};

/// Merkle tree block size (log2 = 12), fixed by composefs.
pub const BLOCK_SIZE: usize = 4096;
const LOG_BLOCKSIZE: u8 = 12;
const DESCRIPTOR_SIZE: usize = 256;

/// Files at least this large are hashed on several threads by [`digest_file`].
/// Below it, thread start-up costs more than it saves.
const PARALLEL_THRESHOLD: u64 = 4 << 20;
/// Bytes each worker reads per `pread`: large enough to amortise the system
/// call, small enough to stay in L2/L3 while hashing.
const READ_CHUNK: usize = 64 << 10;
/// Bytes of file hashed per round of workers; bounds the leaf-hash buffer
/// (segment / 4096 × digest length) and the unevenness at round ends.
const SEGMENT: u64 = 256 << 20;

/// Hash one block (or one level block) with the file's algorithm into `out`
/// (which must be `alg.digest_len()` long).
fn hash_block(alg: HashAlgorithm, block: &[u8], out: &mut [u8]) {
    match alg {
        HashAlgorithm::Sha256 => out.copy_from_slice(&Sha256::digest(block)),
        HashAlgorithm::Sha512 => out.copy_from_slice(&Sha512::digest(block)),
    }
}

/// Hash a possibly short final block, zero-padded to [`BLOCK_SIZE`].
fn hash_padded(alg: HashAlgorithm, data: &[u8], out: &mut [u8]) {
    if data.len() == BLOCK_SIZE {
        hash_block(alg, data, out);
    } else {
        let mut block = [0u8; BLOCK_SIZE];
        let n = data.len().min(BLOCK_SIZE);
        block[..n].copy_from_slice(&data[..n]);
        hash_block(alg, &block, out);
    }
}

/// Hash every full or final-partial block of `data` (a whole number of blocks
/// except possibly at the very end of the file) into consecutive digests in `out`.
fn hash_leaves(alg: HashAlgorithm, data: &[u8], out: &mut [u8]) {
    let dlen = alg.digest_len();
    for (block, slot) in data.chunks(BLOCK_SIZE).zip(out.chunks_mut(dlen)) {
        hash_padded(alg, block, slot);
    }
}

/// The upper part of the Merkle tree: accepts leaf hashes in order and keeps
/// one partially filled block per level.
struct TreeLevels {
    alg: HashAlgorithm,
    /// `levels[i]` holds the not yet hashed part of level `i`'s block, and how
    /// many hashes were ever pushed into level `i`.
    levels: Vec<(Vec<u8>, u64)>,
}

impl TreeLevels {
    fn new(alg: HashAlgorithm) -> Self {
        TreeLevels {
            alg,
            levels: Vec::new(),
        }
    }

    /// Append one hash to `level`, hashing and carrying up when its block fills.
    fn push(&mut self, level: usize, hash: &[u8]) {
        let dlen = self.alg.digest_len();
        let mut level = level;
        let mut carry = [0u8; 64];
        carry[..dlen].copy_from_slice(&hash[..dlen]);
        loop {
            if self.levels.len() <= level {
                self.levels.push((Vec::with_capacity(BLOCK_SIZE), 0));
            }
            let alg = self.alg;
            let (buf, count) = &mut self.levels[level];
            buf.extend_from_slice(&carry[..dlen]);
            *count += 1;
            if buf.len() < BLOCK_SIZE {
                return;
            }
            // Block full (BLOCK_SIZE is a multiple of both digest sizes):
            // hash it now and carry the hash one level up.
            hash_block(alg, buf, &mut carry[..dlen]);
            buf.clear();
            level += 1;
        }
    }

    fn push_leaves(&mut self, hashes: &[u8]) {
        for h in hashes.chunks(self.alg.digest_len()) {
            self.push(0, h);
        }
    }

    /// The root hash (zero-filled for an empty file), in a 64-byte buffer.
    fn root(mut self) -> [u8; 64] {
        let dlen = self.alg.digest_len();
        let mut root = [0u8; 64];
        let mut level = 0;
        while level < self.levels.len() {
            let top = level + 1 == self.levels.len();
            let (buf, count) = &self.levels[level];
            if top && *count == 1 {
                // A single hash on the highest level is the root. (Its block
                // is never full, since one hash is less than a block.)
                root[..dlen].copy_from_slice(&buf[..dlen]);
                return root;
            }
            if !buf.is_empty() {
                let mut h = [0u8; 64];
                hash_padded(self.alg, buf, &mut h[..dlen]);
                self.levels[level].0.clear();
                self.push(level + 1, &h[..dlen]);
            }
            level += 1;
        }
        root
    }
}

/// Build the 256-byte descriptor and hash it: the file digest.
fn descriptor_digest(alg: HashAlgorithm, data_size: u64, root: &[u8; 64]) -> Digest {
    let mut d = [0u8; DESCRIPTOR_SIZE];
    d[0] = 1; // version
    d[1] = alg.number();
    d[2] = LOG_BLOCKSIZE;
    d[3] = 0; // salt_size
              // d[4..8]: reserved
    d[8..16].copy_from_slice(&data_size.to_le_bytes());
    d[16..80].copy_from_slice(root);
    // d[80..112] salt, d[112..256] reserved: zero
    let mut out = [0u8; 64];
    let dlen = alg.digest_len();
    hash_block(alg, &d, &mut out[..dlen]);
    match Digest::from_bytes(alg, &out[..dlen]) {
        Some(d) => d,
        // from_bytes only fails on a length mismatch, and dlen is the
        // algorithm's own length.
        None => unreachable!("digest length matches its algorithm"),
    }
}

/// Streaming fs-verity digest: feed data with [`update`](Self::update) in any
/// pieces, then [`finish`](Self::finish).
pub struct MerkleHasher {
    tree: TreeLevels,
    block: Vec<u8>,
    size: u64,
}

impl MerkleHasher {
    pub fn new(alg: HashAlgorithm) -> Self {
        MerkleHasher {
            tree: TreeLevels::new(alg),
            block: Vec::with_capacity(BLOCK_SIZE),
            size: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let alg = self.tree.alg;
        let dlen = alg.digest_len();
        self.size += data.len() as u64;
        let mut h = [0u8; 64];
        if !self.block.is_empty() {
            let take = (BLOCK_SIZE - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() < BLOCK_SIZE {
                return;
            }
            hash_block(alg, &self.block, &mut h[..dlen]);
            self.tree.push(0, &h[..dlen]);
            self.block.clear();
        }
        let mut chunks = data.chunks_exact(BLOCK_SIZE);
        for b in &mut chunks {
            hash_block(alg, b, &mut h[..dlen]);
            self.tree.push(0, &h[..dlen]);
        }
        self.block.extend_from_slice(chunks.remainder());
    }

    pub fn finish(mut self) -> Digest {
        let alg = self.tree.alg;
        if !self.block.is_empty() {
            let dlen = alg.digest_len();
            let mut h = [0u8; 64];
            hash_padded(alg, &self.block, &mut h[..dlen]);
            self.tree.push(0, &h[..dlen]);
        }
        let size = self.size;
        let root = self.tree.root();
        descriptor_digest(alg, size, &root)
    }
}

/// fs-verity digest of a byte slice.
pub fn digest_bytes(alg: HashAlgorithm, data: &[u8]) -> Digest {
    let mut h = MerkleHasher::new(alg);
    h.update(data);
    h.finish()
}

/// fs-verity digest of everything `r` yields until end of file.
pub fn digest_reader(alg: HashAlgorithm, mut r: impl Read) -> io::Result<Digest> {
    let mut h = MerkleHasher::new(alg);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(buf.get(..n).unwrap_or(&[])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(h.finish())
}

/// Fill `buf` from `file` at `offset` with `pread`, stopping early only at end
/// of file. Returns the number of bytes read.
fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// How many threads to hash with.
fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 64)
}

/// fs-verity digest of a file's content, read with `pread` from offset 0 to
/// end of file (the file's own offset is untouched). Large files hash their
/// Merkle leaves on all cores. The file is read to its end as it is at read
/// time; if it grows or shrinks meanwhile, the digest is of what was read.
pub fn digest_file(alg: HashAlgorithm, file: &File) -> io::Result<Digest> {
    let len = file.metadata()?.len();
    let workers = worker_count();
    if len < PARALLEL_THRESHOLD || workers == 1 {
        return digest_file_serial(alg, file);
    }
    let dlen = alg.digest_len();
    let mut tree = TreeLevels::new(alg);
    let mut size: u64 = 0;
    let mut leaves = Vec::new();
    let mut offset: u64 = 0;
    let mut buffers: Vec<Vec<u8>> = (0..workers).map(|_| vec![0u8; READ_CHUNK]).collect();
    loop {
        // One segment: chunks [offset, offset + SEGMENT) handed out in order
        // to whichever worker is free; each chunk's leaf hashes go to their
        // own slot in `leaves`, so the order of completion does not matter.
        let seg_blocks = (SEGMENT as usize) / BLOCK_SIZE;
        leaves.clear();
        leaves.resize(seg_blocks * dlen, 0u8);
        let chunk_blocks = READ_CHUNK / BLOCK_SIZE;
        let slots = std::sync::Mutex::new(leaves.chunks_mut(chunk_blocks * dlen).enumerate());
        // Per chunk: bytes read (a short read marks end of file).
        let results: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());
        let first_error: std::sync::Mutex<Option<io::Error>> = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for buf in buffers.iter_mut() {
                let slots = &slots;
                let results = &results;
                let first_error = &first_error;
                s.spawn(move || loop {
                    let next = match slots.lock() {
                        Ok(mut it) => it.next(),
                        Err(_) => None,
                    };
                    let Some((i, out)) = next else { return };
                    let pos = offset + (i * READ_CHUNK) as u64;
                    match pread_full(file, buf, pos) {
                        Ok(n) => {
                            let data = buf.get(..n).unwrap_or(&[]);
                            hash_leaves(alg, data, out);
                            if let Ok(mut r) = results.lock() {
                                r.push((i, n));
                            }
                            if n < READ_CHUNK {
                                // End of file: no later chunk has data.
                                return;
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_unstable();
        // Take chunks in order up to the first short one (end of file).
        let mut seg_bytes = 0usize;
        let mut ended = false;
        for (expect, &(i, n)) in results.iter().enumerate() {
            if i != expect {
                // A worker stopped at end of file before reaching this chunk
                // index; everything after is past the end.
                ended = true;
                break;
            }
            seg_bytes += n;
            if n < READ_CHUNK {
                ended = true;
                break;
            }
        }
        if results.len() < seg_blocks / chunk_blocks {
            ended = true;
        }
        let nblocks = seg_bytes.div_ceil(BLOCK_SIZE);
        tree.push_leaves(leaves.get(..nblocks * dlen).unwrap_or(&[]));
        size += seg_bytes as u64;
        offset += seg_bytes as u64;
        if ended || seg_bytes % BLOCK_SIZE != 0 {
            break;
        }
    }
    let root = tree.root();
    Ok(descriptor_digest(alg, size, &root))
}

/// Single-threaded [`digest_file`], for small files (and for callers that
/// already run one file per core).
pub fn digest_file_serial(alg: HashAlgorithm, file: &File) -> io::Result<Digest> {
    let mut h = MerkleHasher::new(alg);
    let len = file.metadata()?.len();
    let cap = (len as usize).clamp(BLOCK_SIZE, READ_CHUNK);
    let mut buf = vec![0u8; cap];
    let mut offset = 0u64;
    loop {
        let n = pread_full(file, &mut buf, offset)?;
        h.update(buf.get(..n).unwrap_or(&[]));
        offset += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An independent, deliberately naive implementation: whole levels in
    /// memory, recomputed from the kernel documentation's description.
    fn reference(alg: HashAlgorithm, data: &[u8]) -> Vec<u8> {
        let h = |b: &[u8]| -> Vec<u8> {
            match alg {
                HashAlgorithm::Sha256 => Sha256::digest(b).to_vec(),
                HashAlgorithm::Sha512 => Sha512::digest(b).to_vec(),
            }
        };
        let pad = |mut v: Vec<u8>| -> Vec<u8> {
            let r = v.len() % 4096;
            if r != 0 {
                v.resize(v.len() + 4096 - r, 0);
            }
            v
        };
        let mut root = vec![0u8; 64];
        if !data.is_empty() {
            let mut level = pad(data.to_vec());
            loop {
                let hashes: Vec<u8> = level.chunks(4096).flat_map(&h).collect();
                if hashes.len() == alg.digest_len() {
                    root[..hashes.len()].copy_from_slice(&hashes);
                    break;
                }
                level = pad(hashes);
            }
        }
        let mut desc = vec![1u8, alg as u8, 12, 0, 0, 0, 0, 0];
        desc.extend_from_slice(&(data.len() as u64).to_le_bytes());
        desc.extend_from_slice(&root);
        desc.resize(256, 0);
        h(&desc)
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn known_vectors() {
        let a = HashAlgorithm::Sha256;
        assert_eq!(
            digest_bytes(a, b"").to_hex(),
            "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
        );
        assert_eq!(
            digest_bytes(a, b"Nobody inspects the spammish repetition").to_hex(),
            "3ed673d5323c9e1c60820f207464b0b858a90ba4ff940b123dd16b425699cebe"
        );
        assert_eq!(
            digest_bytes(a, &vec![b'a'; 819200]).to_hex(),
            "bb9e4aa4428879f4f1d9479d2a851275cf119291c47879c9cef8bf1b4589a779"
        );
    }

    #[test]
    fn boundaries_match_reference() {
        // 128 SHA-256 hashes (64 SHA-512) fill one level block, so sizes
        // around 4096*128 and 4096*64 cross into a new tree level.
        let sizes = [
            0usize,
            1,
            4095,
            4096,
            4097,
            8192,
            4096 * 64,
            4096 * 64 + 1,
            4096 * 128 - 1,
            4096 * 128,
            4096 * 128 + 1,
            4096 * 129,
            (1 << 20) + 3,
        ];
        for alg in [HashAlgorithm::Sha256, HashAlgorithm::Sha512] {
            for (i, &n) in sizes.iter().enumerate() {
                let data = pseudo_random(n, i as u64);
                let want = reference(alg, &data);
                assert_eq!(digest_bytes(alg, &data).as_bytes(), &want[..], "{alg} {n}");
                // Odd-sized pieces exercise the streaming block assembly.
                let got = digest_reader(alg, std::io::Cursor::new(&data)).unwrap();
                assert_eq!(got.as_bytes(), &want[..], "reader {alg} {n}");
                let mut h = MerkleHasher::new(alg);
                for piece in data.chunks(1000) {
                    h.update(piece);
                }
                assert_eq!(h.finish().as_bytes(), &want[..], "pieces {alg} {n}");
            }
        }
    }

    #[test]
    fn parallel_file_matches_reference() {
        // Above the parallel threshold, not a multiple of a chunk or block,
        // and three tree levels for SHA-512 (more than 64*64 blocks).
        for (alg, n) in [
            (
                HashAlgorithm::Sha256,
                (PARALLEL_THRESHOLD as usize) + 3 * READ_CHUNK + 5,
            ),
            (HashAlgorithm::Sha512, 17 << 20),
            (HashAlgorithm::Sha256, 8 << 20),
        ] {
            let data = pseudo_random(n, n as u64);
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let want = reference(alg, &data);
            assert_eq!(
                digest_file(alg, &f).unwrap().as_bytes(),
                &want[..],
                "{alg} {n}"
            );
            assert_eq!(
                digest_file_serial(alg, &f).unwrap().as_bytes(),
                &want[..],
                "serial {alg} {n}"
            );
        }
    }

    #[test]
    fn small_files() {
        for n in [0usize, 1, 4096, 100_000] {
            let data = pseudo_random(n, 7);
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let want = reference(HashAlgorithm::Sha256, &data);
            assert_eq!(
                digest_file(HashAlgorithm::Sha256, &f).unwrap().as_bytes(),
                &want[..]
            );
        }
    }
}
