//! Flattening OCI layers into one [`Tree`], as container runtimes apply them.
//!
//! Contract:
//! - [`Flattener::apply_layer`] reads one layer blob as a stream: it counts
//!   and SHA-256-hashes the compressed bytes as they arrive, decompresses by
//!   media type (tar, tar+gzip, tar+zstd, and Docker's `tar.gzip`), reads the
//!   tar entries in order and applies them. After the tar ends the rest of
//!   the blob is read too, and the layer is refused ([`FlattenError::Blob`])
//!   unless its size and digest are the descriptor's. A blob longer than its
//!   descriptor is refused as soon as the extra byte arrives. Memory is the
//!   tree plus one copy buffer: no file is held whole (files over 64 bytes
//!   stream into the object store batch, hashed while copied).
//! - Entry semantics (the OCI image-spec layer rules, as `umoci unpack` and
//!   containerd apply them): a path is taken relative to the root (leading
//!   `./` and `.` / empty components dropped); an absolute path or a `..`
//!   component is refused ([`FlattenError::PathEscape`]). `.wh.<name>`
//!   deletes `<name>` (and everything below it) from the layers below;
//!   `.wh..wh..opq` in a directory deletes everything in it that this layer
//!   did not itself add. A directory entry over an existing directory
//!   changes its metadata and keeps its content; any other entry replaces
//!   what was at its path (a file over a directory, a directory over a
//!   file). Missing parent directories are created (mode 0755, owner 0,
//!   mtime 0). A parent that exists but is not a directory is refused: the
//!   tree is never walked through a symlink.
//! - Metadata comes from the tar header: permission bits, uid, gid (PAX
//!   `uid`/`gid` records override them), device numbers, mtime (seconds,
//!   plus nanoseconds from a PAX `mtime` record), and xattrs from PAX
//!   `SCHILY.xattr.<name>` records (so `security.capability` survives;
//!   libarchive's base64 `LIBARCHIVE.xattr.*` records are not read). GNU
//!   sparse files are read expanded. Long names and link targets come from
//!   GNU or PAX records (the `tar` crate resolves them).
//! - A hard link (tar type `1`) names a non-directory already in the tree,
//!   from this layer or an earlier one. It becomes a separate inode with the
//!   target's metadata and content (the same object): that is what
//!   `sealctl build` and the C `mkcomposefs` record for a directory that
//!   holds hard links, so the flattened image and the image built from the
//!   unpacked tree are the same bytes (see docs/oci.md).
//! - Regular files of 1..=64 bytes are inline, larger ones get their
//!   fs-verity digest and payload path and, with a batch, are added to it.
//! - [`Flattener::finish`] drops everything no longer reachable (deleted
//!   subtrees) and returns a tree that satisfies [`Tree::validate`].

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::digest::HashAlgorithm;
use crate::image::fsverity::MerkleHasher;
use crate::image::progress::Progress;
use crate::image::store::{Batch, StoreError};
use crate::image::tree::{
    valid_name, Inode, InodeId, InodeKind, RegularFile, Timespec, Tree, TreeError, Xattr,
    INLINE_THRESHOLD, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, ROOT,
};

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The entry that makes its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Layer compression, from the descriptor's media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` for a type that is
    /// not a tar layer this code can read.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// What was wrong with a blob's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("blob {digest}: {found} bytes, but its descriptor says {expected}")]
    WrongSize {
        digest: String,
        expected: u64,
        found: u64,
    },
    #[error("blob {digest}: more bytes than the {expected} its descriptor says")]
    TooLong { digest: String, expected: u64 },
    #[error("blob content has digest {found}, but its descriptor says {expected}")]
    WrongDigest { expected: String, found: String },
    #[error("blob digest {digest:?} is not sha256:<64 lowercase hex>")]
    UnsupportedDigest { digest: String },
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("layer {layer}: {error}")]
    Blob { layer: usize, error: BlobError },
    #[error("layer {layer}: uncompressed content has digest {found}, but the config's diff_id says {expected}")]
    DiffId {
        layer: usize,
        expected: String,
        found: String,
    },
    #[error("layer {layer}: unsupported media type {media_type:?}")]
    MediaType { layer: usize, media_type: String },
    #[error("layer {layer}: reading the layer: {error}")]
    Read { layer: usize, error: io::Error },
    #[error("layer {layer}: entry {path:?} leaves the root (absolute path or '..')")]
    PathEscape { layer: usize, path: String },
    #[error("layer {layer}: entry {path:?}: a parent is not a directory")]
    ParentNotDirectory { layer: usize, path: String },
    #[error("layer {layer}: hard link {path:?} to {target:?}: {reason}")]
    BadHardlink {
        layer: usize,
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("layer {layer}: entry {path:?}: unsupported tar entry type {kind}")]
    EntryType {
        layer: usize,
        path: String,
        kind: u8,
    },
    #[error("layer {layer}: entry {path:?}: {what}")]
    Entry {
        layer: usize,
        path: String,
        what: String,
    },
    #[error("layer {layer}: entry {path:?}: xattr {name:?} is too long for the image format")]
    XattrTooLong {
        layer: usize,
        path: String,
        name: String,
    },
    #[error("layer {layer}: entry {path:?}: {error}")]
    Tree {
        layer: usize,
        path: String,
        error: TreeError,
    },
    #[error("layer {layer}: entry {path:?}: {error}")]
    Store {
        layer: usize,
        path: String,
        error: Box<StoreError>,
    },
}

/// A blob descriptor's facts: digest, size, media type.
#[derive(Clone, Debug)]
pub struct LayerInfo<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub media_type: &'a str,
    /// The config's `diff_id` for this layer (the digest of the
    /// uncompressed tar), checked when given.
    pub diff_id: Option<&'a str>,
}

/// The hex of a `sha256:<64 lowercase hex>` digest.
pub fn sha256_hex(digest: &str) -> Result<&str, BlobError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(BlobError::UnsupportedDigest {
            digest: digest.chars().take(100).collect(),
        }),
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that counts and hashes a blob and refuses more bytes than its
/// descriptor's size. What went wrong is kept in `failure` (the tar and
/// decompression layers above wrap I/O errors and lose their payload).
pub struct VerifyingReader<R> {
    inner: R,
    digest: String,
    expected: u64,
    read: u64,
    hasher: Sha256,
    failure: Arc<Mutex<Option<BlobError>>>,
    progress: Option<Arc<Progress>>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, digest: &str, size: u64) -> Self {
        VerifyingReader {
            inner,
            digest: digest.to_owned(),
            expected: size,
            read: 0,
            hasher: Sha256::new(),
            failure: Arc::new(Mutex::new(None)),
            progress: None,
        }
    }

    /// Count the bytes into `progress` as they arrive.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Read whatever is left and check size and digest.
    pub fn finish(mut self) -> Result<(), BlobError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(self.failure().unwrap_or(BlobError::WrongSize {
                        digest: format!("{} ({e})", self.digest),
                        expected: self.expected,
                        found: self.read,
                    }))
                }
            }
        }
        if self.read != self.expected {
            return Err(BlobError::WrongSize {
                digest: self.digest.clone(),
                expected: self.expected,
                found: self.read,
            });
        }
        let found = format!("sha256:{}", hex(&self.hasher.finalize_reset()));
        if found != self.digest {
            return Err(BlobError::WrongDigest {
                expected: self.digest.clone(),
                found,
            });
        }
        Ok(())
    }

    fn failure(&self) -> Option<BlobError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn failure_slot(&self) -> Arc<Mutex<Option<BlobError>>> {
        Arc::clone(&self.failure)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for at most one byte past the declared size: enough to notice
        // a longer blob without reading on.
        let room = self.expected.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if self.read + n as u64 > self.expected {
            let e = BlobError::TooLong {
                digest: self.digest.clone(),
                expected: self.expected,
            };
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        self.read += n as u64;
        self.hasher.update(&buf[..n]);
        if let Some(p) = &self.progress {
            p.add(0, n as u64);
        }
        Ok(n)
    }
}

/// Read a whole small blob (a manifest or config) of at most `limit`
/// bytes, checking size and digest.
pub fn read_small_blob(
    reader: impl Read,
    digest: &str,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>, BlobError> {
    sha256_hex(digest)?;
    if size > limit {
        return Err(BlobError::WrongSize {
            digest: digest.to_owned(),
            expected: limit,
            found: size,
        });
    }
    let mut v = VerifyingReader::new(reader, digest, size);
    let mut out = Vec::with_capacity(size as usize);
    // `take` keeps a misbehaving source from growing the buffer past size+1.
    let r = (&mut v).take(size + 1).read_to_end(&mut out);
    if let Err(e) = r {
        return Err(v.failure().unwrap_or(BlobError::WrongSize {
            digest: format!("{digest} ({e})"),
            expected: size,
            found: out.len() as u64,
        }));
    }
    v.finish()?;
    Ok(out)
}

/// One change a layer makes, as read from its tar (file contents already
/// in the store batch): what a layer cache keeps to replay a layer without
/// reading its blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A whiteout or opaque marker at `path` (its last component).
    Whiteout { path: Vec<Box<[u8]>> },
    /// A hard link at `path` to `target`.
    Hardlink {
        path: Vec<Box<[u8]>>,
        target: Vec<Box<[u8]>>,
    },
    /// Anything else: `inode` (a directory's entries are empty) at `path`;
    /// an empty path is the root.
    Put { path: Vec<Box<[u8]>>, inode: Inode },
}

/// A path for messages.
fn show(path: &[Box<[u8]>]) -> String {
    let joined: Vec<&[u8]> = path.iter().map(|p| &**p).collect();
    String::from_utf8_lossy(&joined.join(&b'/')).into_owned()
}

fn hex_of(bytes: &[u8]) -> String {
    hex(bytes)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Op {
    /// The cache form: JSON with byte strings in hex.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let path_json = |p: &[Box<[u8]>]| {
            serde_json::Value::from(p.iter().map(|c| hex_of(c)).collect::<Vec<_>>())
        };
        match self {
            Op::Whiteout { path } => json!({"op": "whiteout", "path": path_json(path)}),
            Op::Hardlink { path, target } => {
                json!({"op": "link", "path": path_json(path), "target": path_json(target)})
            }
            Op::Put { path, inode } => {
                let kind = match &inode.kind {
                    InodeKind::Directory(_) => json!({"dir": true}),
                    InodeKind::Regular(r) => json!({
                        "size": r.size,
                        "inline": r.inline.as_deref().map(hex_of),
                        "digest": r.digest.map(|d| d.to_hex()),
                    }),
                    InodeKind::Symlink(t) => json!({"symlink": hex_of(t)}),
                    InodeKind::CharDevice(d) => json!({"char": d}),
                    InodeKind::BlockDevice(d) => json!({"block": d}),
                    InodeKind::Fifo => json!({"fifo": true}),
                    InodeKind::Socket => json!({"socket": true}),
                };
                let xattrs: Vec<[String; 2]> = inode
                    .xattrs
                    .iter()
                    .map(|x| [hex_of(&x.name), hex_of(&x.value)])
                    .collect();
                json!({
                    "op": "put", "path": path_json(path), "perm": inode.perm,
                    "uid": inode.uid, "gid": inode.gid,
                    "mtime": [inode.mtime.sec, inode.mtime.nsec],
                    "xattrs": xattrs, "kind": kind,
                })
            }
        }
    }

    /// Parse [`to_json`](Self::to_json)'s form; `None` if it is not one
    /// (a cache entry that does not parse is not used). File digests are
    /// of algorithm `hash`.
    pub fn from_json(v: &serde_json::Value, hash: HashAlgorithm) -> Option<Op> {
        let path_of = |v: &serde_json::Value| -> Option<Vec<Box<[u8]>>> {
            v.as_array()?
                .iter()
                .map(|c| unhex(c.as_str()?).map(Vec::into_boxed_slice))
                .collect()
        };
        let path = path_of(v.get("path")?)?;
        match v.get("op")?.as_str()? {
            "whiteout" => Some(Op::Whiteout { path }),
            "link" => Some(Op::Hardlink {
                path,
                target: path_of(v.get("target")?)?,
            }),
            "put" => {
                let k = v.get("kind")?;
                let kind = if k.get("dir").is_some() {
                    InodeKind::Directory(Vec::new())
                } else if let Some(size) = k.get("size") {
                    let size = size.as_u64()?;
                    let inline = match k.get("inline")? {
                        serde_json::Value::Null => None,
                        t => Some(unhex(t.as_str()?)?.into_boxed_slice()),
                    };
                    let digest = match k.get("digest")? {
                        serde_json::Value::Null => None,
                        t => Some(crate::digest::Digest::parse_hex(hash, t.as_str()?).ok()?),
                    };
                    if inline.as_ref().is_some_and(|i| i.len() as u64 != size)
                        || (inline.is_none() && size > 0 && digest.is_none())
                    {
                        return None;
                    }
                    InodeKind::Regular(RegularFile {
                        size,
                        payload: digest.map(|d| crate::layout::object_name(&d).into_bytes().into()),
                        inline,
                        digest,
                    })
                } else if let Some(t) = k.get("symlink") {
                    InodeKind::Symlink(unhex(t.as_str()?)?.into())
                } else if let Some(d) = k.get("char") {
                    InodeKind::CharDevice(d.as_u64()?)
                } else if let Some(d) = k.get("block") {
                    InodeKind::BlockDevice(d.as_u64()?)
                } else if k.get("fifo").is_some() {
                    InodeKind::Fifo
                } else if k.get("socket").is_some() {
                    InodeKind::Socket
                } else {
                    return None;
                };
                let mut inode = Inode::new(kind, u32::try_from(v.get("perm")?.as_u64()?).ok()?);
                inode.uid = u32::try_from(v.get("uid")?.as_u64()?).ok()?;
                inode.gid = u32::try_from(v.get("gid")?.as_u64()?).ok()?;
                let m = v.get("mtime")?.as_array()?;
                inode.mtime = Timespec {
                    sec: m.first()?.as_i64()?,
                    nsec: u32::try_from(m.get(1)?.as_u64()?).ok()?,
                };
                for x in v.get("xattrs")?.as_array()? {
                    let pair = x.as_array()?;
                    inode.xattrs.push(Xattr {
                        name: unhex(pair.first()?.as_str()?)?.into(),
                        value: unhex(pair.get(1)?.as_str()?)?.into(),
                    });
                }
                Some(Op::Put { path, inode })
            }
            _ => None,
        }
    }

    /// The object digest this operation needs in the store, if any.
    pub fn object(&self) -> Option<crate::digest::Digest> {
        match self {
            Op::Put { inode, .. } => match &inode.kind {
                InodeKind::Regular(r) if r.inline.is_none() => r.digest,
                _ => None,
            },
            _ => None,
        }
    }
}

/// Options for flattening.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlattenOptions {
    /// fs-verity algorithm for file objects.
    pub hash: HashAlgorithm,
}

/// Applies layers in order onto one tree.
pub struct Flattener<'b, 's> {
    tree: Tree,
    batch: Option<&'b Batch<'s>>,
    opts: FlattenOptions,
    layers: usize,
    record: bool,
    /// The current layer's progress line.
    progress: Option<Arc<Progress>>,
}

/// Per-layer state: which `(directory, name)` entries this layer wrote, so
/// an opaque marker spares them.
#[derive(Default)]
struct LayerState {
    touched: HashSet<(InodeId, Box<[u8]>)>,
}

impl<'b, 's> Flattener<'b, 's> {
    /// An empty root (mode 0755, owner 0, mtime 0) until a layer sets it.
    pub fn new(opts: FlattenOptions, batch: Option<&'b Batch<'s>>) -> Self {
        Flattener {
            tree: Tree::new(),
            batch,
            opts,
            layers: 0,
            record: false,
            progress: None,
        }
    }

    /// Keep the operations each layer applied ([`apply_layer`](Self::apply_layer)
    /// returns them) so a layer cache can replay them later.
    pub fn recording(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Apply the layer whose blob `reader` streams. See the module docs.
    /// Returns the layer's operations when recording (else nothing).
    pub fn apply_layer(
        &mut self,
        layer: &LayerInfo<'_>,
        reader: impl Read,
        progress: Option<Arc<Progress>>,
    ) -> Result<Vec<Op>, FlattenError> {
        let index = self.layers;
        self.layers += 1;
        let blob_err = |error| FlattenError::Blob {
            layer: index,
            error,
        };
        sha256_hex(layer.digest).map_err(blob_err)?;
        let compression =
            Compression::from_media_type(layer.media_type).ok_or(FlattenError::MediaType {
                layer: index,
                media_type: layer.media_type.to_owned(),
            })?;
        let mut verifier = VerifyingReader::new(reader, layer.digest, layer.size);
        if let Some(p) = &progress {
            verifier = verifier.with_progress(Arc::clone(p));
        }
        // Entries are counted as the line's "files".
        self.progress = progress;
        let failure = verifier.failure_slot();
        let mut record = self.record.then(Vec::new);
        let result = match compression {
            Compression::None => self.apply_stream(index, &mut verifier, &mut record),
            Compression::Gzip => self.apply_stream(
                index,
                flate2::read::GzDecoder::new(&mut verifier),
                &mut record,
            ),
            Compression::Zstd => match zstd::stream::read::Decoder::new(&mut verifier) {
                Ok(d) => self.apply_stream(index, d, &mut record),
                Err(error) => Err(FlattenError::Read {
                    layer: index,
                    error,
                }),
            },
        };
        // A blob fault explains a read error better than the tar parser's
        // view of it; otherwise the remaining bytes still have to be
        // counted and hashed before the layer is accepted.
        let blob_fault = failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(e) = blob_fault {
            return Err(blob_err(e));
        }
        match result {
            Ok(diff_id) => {
                verifier.finish().map_err(blob_err)?;
                // The blob is the one the manifest names; the config's
                // diff_id must then name its uncompressed content too.
                if let Some(expected) = layer.diff_id.filter(|d| *d != diff_id) {
                    return Err(FlattenError::DiffId {
                        layer: index,
                        expected: expected.to_owned(),
                        found: diff_id,
                    });
                }
                Ok(record.unwrap_or_default())
            }
            Err(e) => {
                // A truncated or corrupted blob usually shows first as a
                // decompression or tar error: name the blob fault if the
                // bytes prove one.
                if let FlattenError::Read { .. } | FlattenError::Entry { .. } = e {
                    if let Err(blob) = verifier.finish() {
                        return Err(blob_err(blob));
                    }
                }
                Err(e)
            }
        }
    }

    /// Apply the uncompressed tar `reader` streams, read it to its end, and
    /// return its `sha256:` digest (the layer's diff_id).
    fn apply_stream(
        &mut self,
        layer: usize,
        reader: impl Read,
        record: &mut Option<Vec<Op>>,
    ) -> Result<String, FlattenError> {
        let mut hashing = HashingReader {
            inner: reader,
            hasher: Sha256::new(),
        };
        self.apply_tar(layer, &mut hashing, record)?;
        // The tar reader stops at the end-of-archive blocks; the padding
        // after them is part of the diff_id.
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|error| FlattenError::Read { layer, error })?;
        Ok(format!("sha256:{}", hex(&hashing.hasher.finalize())))
    }

    fn apply_tar(
        &mut self,
        layer: usize,
        reader: impl Read,
        record: &mut Option<Vec<Op>>,
    ) -> Result<(), FlattenError> {
        let read_err = |error| FlattenError::Read { layer, error };
        let mut archive = tar::Archive::new(reader);
        let mut state = LayerState::default();
        let mut buf = vec![0u8; 256 << 10];
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            let op = self.parse_entry(layer, &mut entry, &mut buf)?;
            if let Some(p) = &self.progress {
                p.add(1, 0);
            }
            self.apply_op(layer, &mut state, &op)?;
            if let Some(ops) = record {
                ops.push(op);
            }
        }
        Ok(())
    }

    /// Apply a layer from the operations a earlier [`apply_layer`](Self::apply_layer)
    /// recorded (a layer cache), without reading its blob. The caller has
    /// made sure every object the operations name is in the store.
    pub fn replay_layer(&mut self, ops: &[Op]) -> Result<(), FlattenError> {
        let index = self.layers;
        self.layers += 1;
        let mut state = LayerState::default();
        for op in ops {
            self.apply_op(index, &mut state, op)?;
        }
        Ok(())
    }

    /// Read one tar entry into an [`Op`] (file contents go to the batch).
    fn parse_entry<R: Read>(
        &mut self,
        layer: usize,
        entry: &mut tar::Entry<'_, R>,
        buf: &mut [u8],
    ) -> Result<Op, FlattenError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path = split_path(&raw_path).ok_or_else(|| FlattenError::PathEscape {
            layer,
            path: shown.clone(),
        })?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if path
            .last()
            .is_some_and(|name| name.starts_with(WHITEOUT_PREFIX))
        {
            return Ok(Op::Whiteout { path });
        }
        if kind.is_hard_link() {
            let target_raw = entry.link_name_bytes().unwrap_or_default().into_owned();
            let target = split_path(&target_raw).ok_or_else(|| FlattenError::BadHardlink {
                layer,
                path: shown.clone(),
                target: String::from_utf8_lossy(&target_raw).into_owned(),
                reason: "target leaves the root",
            })?;
            return Ok(Op::Hardlink { path, target });
        }
        let pax = self.pax_facts(layer, &shown, entry)?;
        let node_kind = match kind {
            tar::EntryType::Directory => InodeKind::Directory(Vec::new()),
            // The tar crate expands GNU sparse entries (holes read as
            // zeros; size is the real size), so they are files like others.
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                InodeKind::Regular(self.read_content(layer, &shown, entry, size, buf)?)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if target.is_empty() || target.len() > crate::image::tree::MAX_PATH_LEN {
                    return Err(FlattenError::Entry {
                        layer,
                        path: shown,
                        what: "symlink target is empty or too long".into(),
                    });
                }
                InodeKind::Symlink(target.into())
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let rdev = libc::makedev(major, minor);
                if kind == tar::EntryType::Char {
                    InodeKind::CharDevice(rdev)
                } else {
                    InodeKind::BlockDevice(rdev)
                }
            }
            tar::EntryType::Fifo => InodeKind::Fifo,
            other => {
                return Err(FlattenError::EntryType {
                    layer,
                    path: shown,
                    kind: other.as_byte(),
                })
            }
        };
        let mut inode = Inode::new(node_kind, 0);
        set_meta(&mut inode, &header, pax.mtime);
        inode.uid = pax.uid.unwrap_or(inode.uid);
        inode.gid = pax.gid.unwrap_or(inode.gid);
        inode.xattrs = pax.xattrs;
        Ok(Op::Put { path, inode })
    }

    /// Apply one operation of layer `layer` to the tree.
    fn apply_op(
        &mut self,
        layer: usize,
        state: &mut LayerState,
        op: &Op,
    ) -> Result<(), FlattenError> {
        let (path, shown) = match op {
            Op::Whiteout { path } | Op::Hardlink { path, .. } | Op::Put { path, .. } => {
                (path, show(path))
            }
        };
        let Some((name, parents)) = path.split_last() else {
            // The root itself ("./"): only a directory may describe it.
            return match op {
                Op::Put { inode, .. } if inode.kind.is_dir() => {
                    let root = &mut self.tree.inodes[ROOT];
                    root.perm = inode.perm;
                    root.uid = inode.uid;
                    root.gid = inode.gid;
                    root.mtime = inode.mtime;
                    root.xattrs = inode.xattrs.clone();
                    Ok(())
                }
                _ => Err(FlattenError::Entry {
                    layer,
                    path: shown,
                    what: "the root can only be a directory".into(),
                }),
            };
        };
        match op {
            // Whiteouts delete and are not themselves part of the tree.
            // One whose directory is missing or no longer a directory has
            // nothing to delete (umoci writes `d/.wh.x` after the file that
            // replaced the directory `d`).
            Op::Whiteout { .. } => {
                let parent = self
                    .resolve(parents)
                    .filter(|&id| self.tree.inodes[id].kind.is_dir());
                let Some(parent) = parent else {
                    return Ok(());
                };
                if &**name == OPAQUE_MARKER {
                    self.make_opaque(parent, state);
                    return Ok(());
                }
                let target = &name[WHITEOUT_PREFIX.len()..];
                if !valid_name(target) {
                    return Err(FlattenError::Entry {
                        layer,
                        path: shown,
                        what: "whiteout of an invalid name".into(),
                    });
                }
                remove_entry(&mut self.tree, parent, target);
                Ok(())
            }
            Op::Hardlink { target, .. } => {
                let parent = self.checked_parent(layer, &shown, parents, name)?;
                let bad = |reason| FlattenError::BadHardlink {
                    layer,
                    path: shown.clone(),
                    target: show(target),
                    reason,
                };
                let target = self
                    .resolve(target)
                    .ok_or_else(|| bad("target does not exist"))?;
                if self.tree.inodes[target].kind.is_dir() {
                    return Err(bad("target is a directory"));
                }
                state.touched.insert((parent, name.clone()));
                // A separate inode with the target's metadata and content:
                // see the module docs for why.
                let inode = self.tree.inodes[target].clone();
                self.replace(layer, &shown, parent, name, inode)
            }
            Op::Put { inode, .. } => {
                let parent = self.checked_parent(layer, &shown, parents, name)?;
                state.touched.insert((parent, name.clone()));
                let existing = self
                    .tree
                    .lookup(parent, name)
                    .filter(|&id| self.tree.inodes[id].kind.is_dir());
                if let (Some(id), true) = (existing, inode.kind.is_dir()) {
                    // A directory over a directory keeps what is in it.
                    let old = &mut self.tree.inodes[id];
                    old.perm = inode.perm;
                    old.uid = inode.uid;
                    old.gid = inode.gid;
                    old.mtime = inode.mtime;
                    old.xattrs = inode.xattrs.clone();
                    return Ok(());
                }
                let mut fresh = inode.clone();
                if let InodeKind::Directory(entries) = &mut fresh.kind {
                    entries.clear();
                }
                self.replace(layer, &shown, parent, name, fresh)
            }
        }
    }

    /// The parent directory of a new entry (made if missing); the name
    /// must be valid.
    fn checked_parent(
        &mut self,
        layer: usize,
        shown: &str,
        parents: &[Box<[u8]>],
        name: &[u8],
    ) -> Result<InodeId, FlattenError> {
        let parent = self.make_parents(layer, shown, parents)?;
        if !valid_name(name) {
            return Err(FlattenError::Entry {
                layer,
                path: shown.to_owned(),
                what: "invalid file name".into(),
            });
        }
        Ok(parent)
    }

    /// What an entry's PAX records say: xattrs (`SCHILY.xattr.*`, in
    /// archive order), `mtime` with nanoseconds, and `uid`/`gid` (which
    /// writers use for ids too large for the header).
    fn pax_facts<R: Read>(
        &self,
        layer: usize,
        shown: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<PaxFacts, FlattenError> {
        let mut xattrs: Vec<Xattr> = Vec::new();
        let mut mtime = None;
        let mut ids = (None, None);
        let exts = entry
            .pax_extensions()
            .map_err(|error| FlattenError::Read { layer, error })?;
        if let Some(exts) = exts {
            for ext in exts {
                let ext = ext.map_err(|error| FlattenError::Read { layer, error })?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    let value = ext.value_bytes();
                    if name.is_empty()
                        || name.len() > MAX_XATTR_NAME_LEN
                        || value.len() > MAX_XATTR_VALUE_LEN
                    {
                        return Err(FlattenError::XattrTooLong {
                            layer,
                            path: shown.to_owned(),
                            name: String::from_utf8_lossy(name).into_owned(),
                        });
                    }
                    if let Some(x) = xattrs.iter_mut().find(|x| &*x.name == name) {
                        x.value = value.into();
                    } else {
                        xattrs.push(Xattr {
                            name: name.into(),
                            value: value.into(),
                        });
                    }
                } else if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes());
                } else if key == b"uid" || key == b"gid" {
                    let id = std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|t| t.parse::<u32>().ok());
                    if key == b"uid" {
                        ids.0 = id;
                    } else {
                        ids.1 = id;
                    }
                }
            }
        }
        Ok(PaxFacts {
            xattrs,
            mtime,
            uid: ids.0,
            gid: ids.1,
        })
    }

    /// Read a regular file's content: inline up to 64 bytes, otherwise
    /// streamed into the batch (or only hashed without one).
    fn read_content<R: Read>(
        &self,
        layer: usize,
        shown: &str,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
        buf: &mut [u8],
    ) -> Result<RegularFile, FlattenError> {
        let read_err = |error| FlattenError::Read { layer, error };
        let mut file = RegularFile {
            size,
            ..Default::default()
        };
        if size == 0 {
            return Ok(file);
        }
        if size <= INLINE_THRESHOLD {
            let mut data = Vec::with_capacity(size as usize);
            entry.take(size).read_to_end(&mut data).map_err(read_err)?;
            if data.len() as u64 != size {
                return Err(short_entry(layer, shown));
            }
            file.inline = Some(data.into());
            return Ok(file);
        }
        let mut counted = CountingReader {
            inner: entry.take(size),
            count: 0,
        };
        let digest = match self.batch {
            Some(batch) => {
                let label = PathBuf::from(format!("layer {layer}: {shown}"));
                batch
                    .add_reader_hashed(self.opts.hash, &mut counted, &label)
                    .map_err(|e| match e {
                        StoreError::ReadSource { source, .. } => read_err(source),
                        other => FlattenError::Store {
                            layer,
                            path: shown.to_owned(),
                            error: Box::new(other),
                        },
                    })?
            }
            None => {
                let mut h = MerkleHasher::new(self.opts.hash);
                loop {
                    let n = counted.read(buf).map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                h.finish()
            }
        };
        if counted.count != size {
            return Err(short_entry(layer, shown));
        }
        file.payload = Some(crate::layout::object_name(&digest).into_bytes().into());
        file.digest = Some(digest);
        Ok(file)
    }

    /// The directory for `parents`, creating missing ones.
    fn make_parents(
        &mut self,
        layer: usize,
        shown: &str,
        parents: &[Box<[u8]>],
    ) -> Result<InodeId, FlattenError> {
        let mut dir = ROOT;
        for part in parents {
            dir = match self.tree.lookup(dir, part) {
                Some(id) if self.tree.inodes[id].kind.is_dir() => id,
                Some(_) => {
                    return Err(FlattenError::ParentNotDirectory {
                        layer,
                        path: shown.to_owned(),
                    })
                }
                None => self
                    .tree
                    .add(
                        dir,
                        part,
                        Inode::new(InodeKind::Directory(Vec::new()), 0o755),
                    )
                    .map_err(|error| FlattenError::Tree {
                        layer,
                        path: shown.to_owned(),
                        error,
                    })?,
            };
        }
        Ok(dir)
    }

    /// The inode at `parts`, if every component exists (no symlinks followed).
    fn resolve(&self, parts: &[Box<[u8]>]) -> Option<InodeId> {
        let mut id = ROOT;
        for p in parts {
            id = self.tree.lookup(id, p)?;
        }
        Some(id)
    }

    /// Put `inode` at `parent/name`, replacing whatever was there.
    fn replace(
        &mut self,
        layer: usize,
        shown: &str,
        parent: InodeId,
        name: &[u8],
        inode: Inode,
    ) -> Result<(), FlattenError> {
        remove_entry(&mut self.tree, parent, name);
        self.tree
            .add(parent, name, inode)
            .map(|_| ())
            .map_err(|error| FlattenError::Tree {
                layer,
                path: shown.to_owned(),
                error,
            })
    }

    /// Remove every entry of `dir` this layer did not write.
    fn make_opaque(&mut self, dir: InodeId, state: &LayerState) {
        if let InodeKind::Directory(entries) = &mut self.tree.inodes[dir].kind {
            entries.retain(|e| state.touched.contains(&(dir, e.name.clone())));
        }
    }

    /// The flattened tree, with deleted subtrees dropped.
    pub fn finish(self) -> Tree {
        compact(&self.tree)
    }
}

/// See [`Flattener::pax_facts`].
struct PaxFacts {
    xattrs: Vec<Xattr>,
    mtime: Option<Timespec>,
    uid: Option<u32>,
    gid: Option<u32>,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn short_entry(layer: usize, shown: &str) -> FlattenError {
    FlattenError::Entry {
        layer,
        path: shown.to_owned(),
        what: "content shorter than its header's size".into(),
    }
}

/// Apply a tar header's ownership, permissions and mtime.
fn set_meta(inode: &mut Inode, header: &tar::Header, pax_mtime: Option<Timespec>) {
    inode.perm = header.mode().unwrap_or(0) & 0o7777;
    inode.uid = header
        .uid()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    inode.gid = header
        .gid()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    inode.mtime = pax_mtime.unwrap_or(Timespec {
        sec: header
            .mtime()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .unwrap_or(0),
        nsec: 0,
    });
}

/// A PAX time (`seconds[.fraction]`, possibly negative).
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (neg, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        Timespec { sec, nsec }
    } else if nsec == 0 {
        Timespec { sec: -sec, nsec: 0 }
    } else {
        Timespec {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

/// Split a tar path into components: `None` if it is absolute or has a
/// `..` component; `.` and empty components are dropped.
fn split_path(path: &[u8]) -> Option<Vec<Box<[u8]>>> {
    if path.first() == Some(&b'/') {
        return None;
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => out.push(Box::from(p)),
        }
    }
    Some(out)
}

/// Unlink `name` from `dir` (its subtree becomes unreachable; [`compact`]
/// drops it).
fn remove_entry(tree: &mut Tree, dir: InodeId, name: &[u8]) {
    if let Some(InodeKind::Directory(entries)) = tree.inodes.get_mut(dir).map(|i| &mut i.kind) {
        if let Ok(pos) = entries.binary_search_by(|e| (*e.name).cmp(name)) {
            entries.remove(pos);
        }
    }
}

/// A copy of `tree` holding only the inodes reachable from the root.
fn compact(tree: &Tree) -> Tree {
    let mut out = Tree::with_root(tree.inodes[ROOT].clone());
    let mut stack = vec![(ROOT, ROOT)];
    while let Some((old_dir, new_dir)) = stack.pop() {
        for e in tree.entries(old_dir) {
            let inode = &tree.inodes[e.inode];
            let mut copy = inode.clone();
            if let InodeKind::Directory(entries) = &mut copy.kind {
                entries.clear();
            }
            let id = out.push(copy);
            // Entries come sorted from the source directory.
            if let InodeKind::Directory(entries) = &mut out.inodes[new_dir].kind {
                entries.push(crate::image::tree::DirEntry {
                    name: e.name.clone(),
                    inode: id,
                });
            }
            if inode.kind.is_dir() {
                stack.push((e.inode, id));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    /// A layer archive built entry by entry.
    struct Layer(tar::Builder<Vec<u8>>);

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    impl Layer {
        fn new() -> Layer {
            Layer(tar::Builder::new(Vec::new()))
        }
        fn dir(mut self, path: &str, mode: u32) -> Layer {
            let mut h = header(tar::EntryType::Directory, mode, 0);
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        fn file(mut self, path: &str, data: &[u8]) -> Layer {
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        fn link(mut self, path: &str, target: &str) -> Layer {
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        fn node(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Layer {
            let mut h = header(kind, 0o600, 0);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            self.0.append_data(&mut h, path, &[][..]).unwrap();
            self
        }
        fn pax(mut self, records: &[(&str, &[u8])]) -> Layer {
            self.0
                .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
            self
        }
        /// An entry whose name is written raw (the builder refuses `..`
        /// and absolute paths, as a hostile archive would not).
        fn raw(mut self, name: &[u8]) -> Layer {
            let mut h = header(tar::EntryType::Regular, 0o644, 1);
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            self.0.append(&h, &b"x"[..]).unwrap();
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn apply(f: &mut Flattener<'_, '_>, blob: &[u8], media_type: &str) -> Result<(), FlattenError> {
        let digest = sha256_digest(blob);
        let info = LayerInfo {
            digest: &digest,
            size: blob.len() as u64,
            media_type,
            diff_id: None,
        };
        f.apply_layer(&info, blob, None).map(|_| ())
    }

    fn flatten(layers: &[Vec<u8>]) -> Tree {
        let mut f = Flattener::new(FlattenOptions::default(), None);
        for l in layers {
            apply(&mut f, l, TAR).unwrap();
        }
        let t = f.finish();
        t.validate().unwrap();
        t
    }

    fn at(t: &Tree, path: &str) -> Option<InodeId> {
        let mut id = ROOT;
        for p in path.split('/') {
            id = t.lookup(id, p.as_bytes())?;
        }
        Some(id)
    }

    fn inline(t: &Tree, path: &str) -> Vec<u8> {
        match &t.inodes[at(t, path).unwrap()].kind {
            InodeKind::Regular(r) => r.inline.as_deref().unwrap_or_default().to_vec(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn whiteouts_remove_lower_entries_and_subtrees() {
        let lower = Layer::new()
            .dir("etc", 0o755)
            .file("etc/a", b"a")
            .dir("etc/sub", 0o755)
            .file("etc/sub/deep", b"deep")
            .file("keep", b"k")
            .bytes();
        let upper = Layer::new()
            .file("etc/.wh.a", b"")
            .file("etc/.wh.sub", b"")
            .bytes();
        let t = flatten(&[lower, upper]);
        assert!(at(&t, "etc/a").is_none());
        assert!(at(&t, "etc/sub").is_none());
        assert!(at(&t, "etc/.wh.a").is_none(), "whiteouts are not files");
        assert_eq!(inline(&t, "keep"), b"k");
        // The deleted subtree is gone from the arena too.
        assert!(!t.inodes.iter().any(|i| matches!(&i.kind,
            InodeKind::Regular(r) if r.inline.as_deref() == Some(&b"deep"[..]))));
    }

    #[test]
    fn opaque_dir_hides_lower_content_but_keeps_its_own_layer() {
        let lower = Layer::new()
            .dir("d", 0o755)
            .file("d/old", b"old")
            .file("d/other", b"o")
            .bytes();
        // The marker after this layer's own entry: the entry survives.
        let upper = Layer::new()
            .dir("d", 0o700)
            .file("d/new", b"new")
            .file("d/.wh..wh..opq", b"")
            .bytes();
        let t = flatten(&[lower, upper]);
        let names: Vec<&[u8]> = t
            .entries(at(&t, "d").unwrap())
            .iter()
            .map(|e| &*e.name)
            .collect();
        assert_eq!(names, vec![&b"new"[..]]);
        assert_eq!(t.inodes[at(&t, "d").unwrap()].perm, 0o700);
    }

    #[test]
    fn hardlinks_within_and_across_layers_copy_the_target() {
        let big = vec![7u8; 5000];
        let lower = Layer::new().file("bin/tool", &big).bytes();
        let upper = Layer::new()
            .link("usr/bin/tool", "bin/tool")
            .file("small", b"s")
            .link("small2", "./small")
            .bytes();
        let t = flatten(&[lower, upper]);
        let a = at(&t, "bin/tool").unwrap();
        let b = at(&t, "usr/bin/tool").unwrap();
        assert_ne!(
            a, b,
            "hard links become separate inodes (as a directory scan)"
        );
        assert_eq!(
            t.inodes[a].kind, t.inodes[b].kind,
            "same content and object"
        );
        assert_eq!(inline(&t, "small2"), b"s");
        let missing = Layer::new().link("x", "nowhere").bytes();
        let mut f = Flattener::new(FlattenOptions::default(), None);
        assert!(matches!(
            apply(&mut f, &missing, TAR),
            Err(FlattenError::BadHardlink { .. })
        ));
    }

    #[test]
    fn pax_xattrs_capabilities_long_names_and_mtime() {
        let cap: &[u8] =
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(200));
        let layer = Layer::new()
            .pax(&[
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.user.note", b"hello"),
                ("mtime", b"1700000001.5"),
                ("uid", b"4000000000"),
            ])
            .file("bin/ping", &[1u8; 100])
            .file(&long, b"long")
            .bytes();
        let t = flatten(&[layer]);
        let ping = &t.inodes[at(&t, "bin/ping").unwrap()];
        assert_eq!(ping.xattr(b"security.capability"), Some(cap));
        assert_eq!(ping.xattr(b"user.note"), Some(&b"hello"[..]));
        assert_eq!(ping.uid, 4_000_000_000, "PAX uid beyond the header's range");
        assert_eq!(
            ping.mtime,
            Timespec {
                sec: 1_700_000_001,
                nsec: 500_000_000
            }
        );
        match &ping.kind {
            InodeKind::Regular(r) => {
                assert_eq!(r.size, 100);
                assert!(r.inline.is_none() && r.digest.is_some() && r.payload.is_some());
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(inline(&t, &long), b"long");
        // Implicit parents: 0755, owner 0, mtime 0.
        let bin = &t.inodes[at(&t, "bin").unwrap()];
        assert_eq!((bin.perm, bin.uid, bin.mtime.sec), (0o755, 0, 0));
    }

    #[test]
    fn whiteouts_below_a_replaced_directory_delete_nothing() {
        let lower = Layer::new().dir("d", 0o755).file("d/x", b"x").bytes();
        // As umoci writes a directory replaced by a file.
        let upper = Layer::new()
            .file("d", b"file now")
            .file("d/.wh.x", b"")
            .file("gone/.wh.y", b"")
            .bytes();
        let t = flatten(&[lower, upper]);
        assert_eq!(inline(&t, "d"), b"file now");
        assert!(at(&t, "gone").is_none(), "a whiteout creates no parents");
    }

    #[test]
    fn devices_fifos_and_replacements() {
        let lower = Layer::new()
            .dir("x", 0o755)
            .file("x/inner", b"i")
            .file("y", b"file")
            .bytes();
        let upper = Layer::new()
            .file("x", b"now a file")
            .dir("y", 0o750)
            .node("dev/null", tar::EntryType::Char, 1, 3)
            .node("dev/sda", tar::EntryType::Block, 8, 0)
            .node("run/fifo", tar::EntryType::Fifo, 0, 0)
            .bytes();
        let t = flatten(&[lower, upper]);
        assert_eq!(inline(&t, "x"), b"now a file");
        assert!(t.inodes[at(&t, "y").unwrap()].kind.is_dir());
        assert_eq!(
            t.inodes[at(&t, "dev/null").unwrap()].kind,
            InodeKind::CharDevice(libc::makedev(1, 3))
        );
        assert_eq!(
            t.inodes[at(&t, "dev/sda").unwrap()].kind,
            InodeKind::BlockDevice(libc::makedev(8, 0))
        );
        assert_eq!(t.inodes[at(&t, "run/fifo").unwrap()].kind, InodeKind::Fifo);
    }

    #[test]
    fn path_escapes_are_refused() {
        for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a/../../b"] {
            let layer = Layer::new().raw(bad).bytes();
            let mut f = Flattener::new(FlattenOptions::default(), None);
            let err = apply(&mut f, &layer, TAR).unwrap_err();
            assert!(
                matches!(err, FlattenError::PathEscape { .. }),
                "{}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
        // A file in the way of a parent is refused (no walking through it).
        let layer = Layer::new().file("f", b"x").file("f/g", b"y").bytes();
        let mut f = Flattener::new(FlattenOptions::default(), None);
        assert!(matches!(
            apply(&mut f, &layer, TAR),
            Err(FlattenError::ParentNotDirectory { .. })
        ));
    }

    #[test]
    fn compressed_layers_give_the_same_tree() {
        use std::io::Write;
        let tar = Layer::new().file("a", &[3u8; 1000]).dir("d", 0o711).bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let plain = flatten(&[tar]);
        for (blob, media) in [
            (gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let mut f = Flattener::new(FlattenOptions::default(), None);
            apply(&mut f, &blob, media).unwrap();
            assert_eq!(f.finish(), plain, "{media}");
        }
    }

    #[test]
    fn blob_digest_and_size_are_checked() {
        let tar = Layer::new().file("a", b"a").bytes();
        let right = sha256_digest(&tar);
        let wrong = sha256_digest(b"other");
        let cases: [(&str, u64, &[u8]); 3] = [
            (&wrong, tar.len() as u64, &tar),
            (&right, tar.len() as u64 + 10, &tar),
            (&right, tar.len() as u64 - 512, &tar),
        ];
        for (digest, size, data) in cases {
            let info = LayerInfo {
                digest,
                size,
                media_type: TAR,
                diff_id: None,
            };
            let mut f = Flattener::new(FlattenOptions::default(), None);
            let err = f.apply_layer(&info, data, None).unwrap_err();
            assert!(matches!(err, FlattenError::Blob { .. }), "{err}");
        }
        let info = LayerInfo {
            digest: "sha256:../../etc",
            size: 1,
            media_type: TAR,
            diff_id: None,
        };
        let mut f = Flattener::new(FlattenOptions::default(), None);
        assert!(f.apply_layer(&info, &b"x"[..], None).is_err());
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(Timespec {
                sec: -2,
                nsec: 750_000_000
            })
        );
    }

    #[test]
    fn recorded_operations_replay_to_the_same_tree_through_json() {
        let cap: &[u8] = b"\x01\x00\x00\x02";
        let lower = Layer::new()
            .dir("d", 0o755)
            .file("d/x", b"x")
            .pax(&[("SCHILY.xattr.security.capability", cap)])
            .file("big", &[9u8; 3000])
            .node("dev/null", tar::EntryType::Char, 1, 3)
            .bytes();
        let upper = Layer::new()
            .file("d/.wh..wh..opq", b"")
            .file("d/y", b"y")
            .link("big2", "big")
            .file(".wh.dev", b"")
            .bytes();
        let mut read = Flattener::new(FlattenOptions::default(), None).recording(true);
        let mut recorded = Vec::new();
        for l in [&lower, &upper] {
            let digest = sha256_digest(l);
            let info = LayerInfo {
                digest: &digest,
                size: l.len() as u64,
                media_type: TAR,
                diff_id: Some(&digest),
            };
            recorded.push(read.apply_layer(&info, &l[..], None).unwrap());
        }
        let expected = read.finish();
        let mut replayed = Flattener::new(FlattenOptions::default(), None);
        for ops in &recorded {
            let back: Vec<Op> = ops
                .iter()
                .map(|o| Op::from_json(&o.to_json(), HashAlgorithm::Sha256).unwrap())
                .collect();
            assert_eq!(&back, ops);
            replayed.replay_layer(&back).unwrap();
        }
        assert_eq!(replayed.finish(), expected);
        assert!(Op::from_json(&serde_json::json!({"op": "put"}), HashAlgorithm::Sha256).is_none());
    }

    #[test]
    fn a_layer_whose_content_is_not_its_diff_id_is_refused() {
        use std::io::Write;
        let tar = Layer::new().file("a", b"a").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let digest = sha256_digest(&gz);
        let right = sha256_digest(&tar);
        let wrong = sha256_digest(b"another tar");
        for (diff_id, ok) in [(&right, true), (&wrong, false)] {
            let info = LayerInfo {
                digest: &digest,
                size: gz.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
                diff_id: Some(diff_id),
            };
            let mut f = Flattener::new(FlattenOptions::default(), None);
            let r = f.apply_layer(&info, &gz[..], None);
            assert_eq!(r.is_ok(), ok, "{r:?}");
            if !ok {
                assert!(matches!(r, Err(FlattenError::DiffId { .. })));
            }
        }
    }
}
