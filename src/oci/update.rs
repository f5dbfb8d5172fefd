//! `sealctl update`: pull a sealed OCI image into the physical root's
//! repository, install it there, and stage its boot entry as a trial with
//! boot counting.
//!
//! Contract:
//! - Nothing is written before the arguments are checked (entry name,
//!   tries, the base command line, an `EFI/` directory on the ESP, so an
//!   unmounted mount point is refused). Then, in this order:
//!   1. [`crate::oci::pull::pull`] (the one owner of pulling): the seal is
//!      verified before any layer is read, the image is accepted only with
//!      the sealed digest. A refused pull leaves the repository and the ESP
//!      as they were.
//!   2. [`crate::image::repo::install`] of the image from the repository
//!      into itself: every object is already there, so this creates the
//!      deployment's state directories and enables fs-verity on each object
//!      and the image (the boot mounts with `verity=require`). With
//!      `verity: false` that phase is skipped (a root whose filesystem has
//!      no fs-verity yet; the boot refuses such an image, so its trial
//!      fails and the machine falls back).
//!   3. The boot files are read from the image itself ([`BootFiles`]: a UKI
//!      without `.cmdline` at [`UKI_PATH`], else the kernel and initramfs
//!      at `/usr/lib/modules/<kver>/{vmlinuz,initramfs.img}`), each checked
//!      against its fs-verity digest as read, and copied to
//!      `ESP/sealroot/<hex>/` (each file atomically: temporary, `fsync`,
//!      rename, directory `fsync`).
//!   4. Last, the commit point: the Type #1 entry
//!      `ESP/loader/entries/<name>+<tries>.conf` (same atomic write; the
//!      temporary is never `*.conf`, so systemd-boot never lists half an
//!      entry). Its `options` line is the base command line followed by
//!      `composefs.digest=v1-<alg>-12:<hex>`, the only digest word on it.
//! - An entry with the same name already on the ESP (in any counter state)
//!   with exactly the text this update would write makes the update a
//!   no-op for the ESP ([`Staged::Already`]; only boot files that went
//!   missing are written again); one with other text is refused
//!   ([`UpdateError::EntryExists`]) before anything is written on the ESP.
//! - A killed update leaves at most temporaries (removed by the next
//!   writer) and complete files nobody lists; rerunning it completes it.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::image::bootcount::{self, EntryName, EntryState, StageError};
use crate::image::erofs::reader::{read_image, ReadError};
use crate::image::fileio::{self, FileIoError};
use crate::image::fsverity;
use crate::image::progress::Progress;
use crate::image::repo::{self, InstallOptions, InstallReport, Repo, RepoError};
use crate::image::tree::{InodeKind, Tree, ROOT};
use crate::image::uki::{self, PeError};
use crate::oci::pull::{pull, OciError, PullOptions, PullReport};
use crate::oci::source::ImageSource;
use crate::seal;

/// Where an image ships a UKI for sealroot (without `.cmdline`: the entry's
/// `options` carry the digest).
pub const UKI_PATH: &str = "usr/lib/sealroot/uki.efi";
/// Where an image ships its kernels (bootc's and kernel-install's layout):
/// `<kver>/vmlinuz` and `<kver>/initramfs.img` below it.
pub const MODULES_DIR: &str = "usr/lib/modules";
/// The image's default kernel command line (kernel-install's file), used
/// when no `--cmdline` is given.
pub const CMDLINE_PATH: &str = "usr/lib/kernel/cmdline";
/// The directory on the ESP that holds each staged image's boot files,
/// `ESP/sealroot/<hex>/`.
pub const ESP_DIR: &str = "sealroot";
/// Largest boot file read from an image.
pub const MAX_BOOT_FILE: u64 = 1 << 30;
/// Largest command-line file read from an image.
const MAX_CMDLINE_FILE: u64 = 64 << 10;

/// Why an update failed. Every variant before [`UpdateError::Stage`]
/// leaves the ESP as it was.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("entry name {name:?} is not usable: 1 to {max} characters of [A-Za-z0-9._-], not starting with '.'", max = bootcount::MAX_NAME)]
    BadName { name: String },
    #[error("sort-key {sort_key:?} is not usable: 1 to {max} characters of [A-Za-z0-9._-], not starting with '.'", max = bootcount::MAX_NAME)]
    BadSortKey { sort_key: String },
    #[error("--tries 0 would stage an entry that systemd-boot treats as bad from the start")]
    ZeroTries,
    #[error("the base command line {cmdline:?} is not usable: {reason}")]
    BadCmdline {
        cmdline: String,
        reason: &'static str,
    },
    #[error(
        "{} is not a mounted EFI system partition (it has no EFI/ directory); mount the ESP and give its mount point",
        .path.display()
    )]
    NotAnEsp { path: PathBuf },
    #[error("{0}")]
    Pull(#[from] OciError),
    #[error("install into {root}: {error}", root = .root.display())]
    Install { root: PathBuf, error: RepoError },
    #[error("image {}: cannot read it: {error}", .digest.to_hex())]
    ReadImage {
        digest: Box<Digest>,
        error: ReadError,
    },
    #[error(
        "image {}: no boot files: neither /{UKI_PATH} nor a /{MODULES_DIR}/<kver>/ with vmlinuz and initramfs.img",
        .digest.to_hex()
    )]
    NoBootFiles { digest: Box<Digest> },
    #[error("image {}: several kernels in /{MODULES_DIR} ({}); choose one with --kver", .digest.to_hex(), .kvers.join(", "))]
    SeveralKernels {
        digest: Box<Digest>,
        kvers: Vec<String>,
    },
    #[error("image {}: /{path} is not a regular file with its content in the repository", .digest.to_hex())]
    NotAFile { digest: Box<Digest>, path: String },
    #[error("image {}: /{path} is {size} bytes, more than {max}", .digest.to_hex())]
    TooLarge {
        digest: Box<Digest>,
        path: String,
        size: u64,
        max: u64,
    },
    #[error("image {}: /{path}: object {}: {error}", .digest.to_hex(), .object.to_hex())]
    Object {
        digest: Box<Digest>,
        path: String,
        object: Box<Digest>,
        error: FileIoError,
    },
    #[error("image {}: /{path}: object {} holds content with fs-verity digest {}", .digest.to_hex(), .object.to_hex(), .found.to_hex())]
    ObjectCorrupt {
        digest: Box<Digest>,
        path: String,
        object: Box<Digest>,
        found: Box<Digest>,
    },
    #[error("image {}: /{UKI_PATH} is not a UKI: {error}", .digest.to_hex())]
    NotUki { digest: Box<Digest>, error: PeError },
    #[error("image {}: /{UKI_PATH} is a PE file without a .linux section, not a UKI", .digest.to_hex())]
    UkiWithoutKernel { digest: Box<Digest> },
    #[error(
        "image {}: /{UKI_PATH} has a .cmdline section ({cmdline:?}); a UKI inside the image cannot name the image's own digest, so it must leave the command line to the entry",
        .digest.to_hex()
    )]
    UkiHasCmdline {
        digest: Box<Digest>,
        cmdline: String,
    },
    #[error("image {}: no --cmdline given and the image has no /{CMDLINE_PATH}", .digest.to_hex())]
    NoCmdline { digest: Box<Digest> },
    #[error("image {}: the seal in the repository: {error}", .digest.to_hex())]
    Seal {
        digest: Box<Digest>,
        error: seal::SealError,
    },
    #[error(
        "an entry named {name:?} is already on the ESP with other content: {} (remove it, or choose another --name)",
        .path.display()
    )]
    EntryExists { name: String, path: PathBuf },
    #[error("staging on the ESP: {0}")]
    Stage(#[from] StageError),
    #[error("staging on the ESP: {0}")]
    File(#[from] FileIoError),
}

/// What to stage, besides what to trust.
pub struct UpdateOptions<'a> {
    pub pull: PullOptions<'a>,
    /// The mounted EFI system partition.
    pub esp: PathBuf,
    /// Tries before systemd-boot gives up on the entry (at least 1).
    pub tries: u32,
    /// Entry name (without counter and `.conf`); default
    /// `sealroot-<serial>-<first 12 hex of the digest>`.
    pub name: Option<String>,
    /// The base kernel command line (without a digest); default: the
    /// image's `/usr/lib/kernel/cmdline`.
    pub cmdline: Option<String>,
    /// Which `/usr/lib/modules/<kver>` when the image has several.
    pub kver: Option<String>,
    /// The entry's `sort-key` (give A's UKI the same `IMAGE_ID`).
    pub sort_key: String,
    /// Enable fs-verity on the installed objects (see the module docs).
    pub verity: bool,
}

/// How the entry boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootKind {
    /// `efi /sealroot/<hex>/uki.efi` from the image's [`UKI_PATH`].
    Uki,
    /// `linux` and `initrd` from `/usr/lib/modules/<kver>/`.
    Kernel { kver: String },
}

/// Whether the entry was written now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staged {
    New,
    /// The same entry was already on the ESP, in this counter state.
    Already(EntryState),
}

/// What [`update`] did.
#[derive(Debug)]
pub struct UpdateReport {
    pub pull: PullReport,
    pub install: InstallReport,
    pub kind: BootKind,
    /// The entry file as it is now on the ESP.
    pub entry: PathBuf,
    pub staged: Staged,
    /// The full `options` line.
    pub options: String,
    /// Each boot file: its path in the image and its copy on the ESP.
    pub boot_files: Vec<(String, PathBuf)>,
}

/// A boot file read from the image: its path in the image and its bytes.
struct BootFile {
    image_path: String,
    esp_name: &'static str,
    data: Vec<u8>,
}

/// Check the words of a base command line: printable ASCII, no newline,
/// no digest word (the staged one must be the only one).
pub fn check_cmdline(cmdline: &str) -> Result<(), UpdateError> {
    let bad = |reason| UpdateError::BadCmdline {
        cmdline: cmdline.to_owned(),
        reason,
    };
    if !cmdline.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(bad("only printable ASCII and spaces"));
    }
    if cmdline
        .split(' ')
        .any(|w| w.starts_with("composefs=") || w.starts_with("composefs.digest="))
    {
        return Err(bad(
            "it names a digest; the entry's own is appended and must be the only one",
        ));
    }
    Ok(())
}

/// Pull, install and stage (module docs).
pub fn update<S: ImageSource>(
    source: &S,
    root: &Repo,
    opts: UpdateOptions<'_>,
    progress: &Progress,
) -> Result<UpdateReport, UpdateError> {
    if let Some(name) = &opts.name {
        bootcount::check_stem(name).map_err(|_| UpdateError::BadName { name: name.clone() })?;
    }
    if opts.tries == 0 {
        return Err(UpdateError::ZeroTries);
    }
    if bootcount::check_stem(&opts.sort_key).is_err() {
        return Err(UpdateError::BadSortKey {
            sort_key: opts.sort_key.clone(),
        });
    }
    if let Some(c) = &opts.cmdline {
        check_cmdline(c)?;
    }
    // An unmounted /efi is an empty directory of the root: staging there
    // would boot nothing, so look for the ESP's EFI/ before pulling.
    if !opts.esp.join("EFI").is_dir() {
        return Err(UpdateError::NotAnEsp {
            path: opts.esp.clone(),
        });
    }
    let pulled = pull(source, root, opts.pull)?;
    let digest = pulled.digest;
    let install = repo::install(
        root,
        root,
        &digest,
        InstallOptions {
            copy_only: !opts.verity,
        },
        progress,
    )
    .map_err(|error| UpdateError::Install {
        root: root.root().to_path_buf(),
        error,
    })?;

    let image = repo::read_checked_image(root, &digest).map_err(|error| UpdateError::Install {
        root: root.root().to_path_buf(),
        error,
    })?;
    let tree = read_image(&image).map_err(|error| UpdateError::ReadImage {
        digest: Box::new(digest),
        error,
    })?;
    drop(image);
    let (kind, files) = boot_files(root, &tree, &digest, opts.kver.as_deref())?;
    let base = match opts.cmdline {
        Some(c) => c,
        None => {
            let text = match lookup(&tree, CMDLINE_PATH) {
                Some(_) => read_file(root, &tree, &digest, CMDLINE_PATH, MAX_CMDLINE_FILE)?,
                None => {
                    return Err(UpdateError::NoCmdline {
                        digest: Box::new(digest),
                    })
                }
            };
            let c = String::from_utf8_lossy(&text)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            check_cmdline(&c)?;
            c
        }
    };
    let (seal_json, _) =
        seal::read_seal_files(&root.composefs_dir(), &digest).map_err(|error| {
            UpdateError::Seal {
                digest: Box::new(digest),
                error,
            }
        })?;
    let manifest = seal::Manifest::parse(&seal_json).map_err(|error| UpdateError::Seal {
        digest: Box::new(digest),
        error,
    })?;
    let hex = digest.to_hex();
    let name = opts
        .name
        .unwrap_or_else(|| format!("sealroot-{}-{}", manifest.serial, &hex[..12]));
    let options = format!("{base} composefs.digest={}", digest.to_composefs())
        .trim_start()
        .to_owned();
    let entry_text = entry_text(&manifest, &opts.sort_key, &hex, &kind, &files, &options);

    let dir = opts.esp.join(ESP_DIR).join(&hex);
    let boot_paths: Vec<(String, PathBuf)> = files
        .iter()
        .map(|f| (format!("/{}", f.image_path), dir.join(f.esp_name)))
        .collect();
    // An entry of this name with other text: refused before any write.
    // The same text: already staged (its boot files are restored below if
    // they went missing, nothing else is written).
    let mut already = None;
    for (existing, path) in bootcount::type1_entries(&opts.esp)? {
        if existing.stem.eq_ignore_ascii_case(&name) {
            if std::fs::read(&path).ok().as_deref() != Some(entry_text.as_bytes()) {
                return Err(UpdateError::EntryExists { name, path });
            }
            already = Some((existing.state(), path));
            break;
        }
    }
    // The boot files, each atomically (only when missing or different);
    // then the entry, the commit point.
    prepare_dir(&dir)?;
    for f in &files {
        let dst = dir.join(f.esp_name);
        if std::fs::read(&dst).ok().as_deref() != Some(&f.data[..]) {
            fileio::write_atomic(&dst, &f.data, None)?;
        }
    }
    if let Some((state, path)) = already {
        return Ok(UpdateReport {
            pull: pulled,
            install,
            kind,
            entry: path,
            staged: Staged::Already(state),
            options,
            boot_files: boot_paths,
        });
    }
    let entries = opts.esp.join(bootcount::TYPE1_DIR);
    prepare_dir(&entries)?;
    let file_name = EntryName {
        stem: name,
        left: Some(opts.tries),
        done: None,
    }
    .type1_file_name();
    let entry = entries.join(file_name);
    fileio::write_atomic(&entry, entry_text.as_bytes(), None)?;
    Ok(UpdateReport {
        pull: pulled,
        install,
        kind,
        entry,
        staged: Staged::New,
        options,
        boot_files: boot_paths,
    })
}

/// The Type #1 entry's text.
fn entry_text(
    manifest: &seal::Manifest,
    sort_key: &str,
    hex: &str,
    kind: &BootKind,
    files: &[BootFile],
    options: &str,
) -> String {
    let os = manifest.os.as_deref().unwrap_or("sealroot");
    let version = manifest.version.as_deref().unwrap_or("");
    let title = format!(
        "{os} {version} (serial {}, {})",
        manifest.serial,
        &hex[..12]
    )
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ");
    let mut t = format!(
        "title {title}\nsort-key {sort_key}\nversion {}\n",
        manifest.serial
    );
    let path = |f: &BootFile| format!("/{ESP_DIR}/{hex}/{}", f.esp_name);
    match kind {
        BootKind::Uki => t.push_str(&format!("efi {}\n", path(&files[0]))),
        BootKind::Kernel { .. } => {
            t.push_str(&format!("linux {}\n", path(&files[0])));
            t.push_str(&format!("initrd {}\n", path(&files[1])));
        }
    }
    t.push_str(&format!("options {options}\n"));
    t
}

/// The inode at `path` (relative, `/`-separated), following no symlinks.
fn lookup(tree: &Tree, path: &str) -> Option<usize> {
    let mut id = ROOT;
    for part in path.split('/') {
        id = tree.lookup(id, part.as_bytes())?;
    }
    Some(id)
}

/// Read a regular file of the image: inline, or its object, whose fs-verity
/// digest is checked against the name.
fn read_file(
    root: &Repo,
    tree: &Tree,
    digest: &Digest,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, UpdateError> {
    let not_a_file = || UpdateError::NotAFile {
        digest: Box::new(*digest),
        path: path.to_owned(),
    };
    let inode = lookup(tree, path)
        .and_then(|id| tree.get(id))
        .ok_or_else(not_a_file)?;
    let InodeKind::Regular(file) = &inode.kind else {
        return Err(not_a_file());
    };
    if file.size > max {
        return Err(UpdateError::TooLarge {
            digest: Box::new(*digest),
            path: path.to_owned(),
            size: file.size,
            max,
        });
    }
    if file.is_inline() {
        return Ok(file.inline.as_deref().unwrap_or_default().to_vec());
    }
    let object = file.digest.ok_or_else(not_a_file)?;
    let data = fileio::read_bounded(&root.object_path(&object), max).map_err(|error| {
        UpdateError::Object {
            digest: Box::new(*digest),
            path: path.to_owned(),
            object: Box::new(object),
            error,
        }
    })?;
    let found = fsverity::digest_bytes(object.algorithm(), &data);
    if found != object {
        return Err(UpdateError::ObjectCorrupt {
            digest: Box::new(*digest),
            path: path.to_owned(),
            object: Box::new(object),
            found: Box::new(found),
        });
    }
    Ok(data)
}

/// Find and read the image's boot files (module docs, step 3).
fn boot_files(
    root: &Repo,
    tree: &Tree,
    digest: &Digest,
    kver: Option<&str>,
) -> Result<(BootKind, Vec<BootFile>), UpdateError> {
    if lookup(tree, UKI_PATH).is_some() {
        let data = read_file(root, tree, digest, UKI_PATH, MAX_BOOT_FILE)?;
        let info = uki::inspect(&data).map_err(|error| UpdateError::NotUki {
            digest: Box::new(*digest),
            error,
        })?;
        if !info.has_linux {
            return Err(UpdateError::UkiWithoutKernel {
                digest: Box::new(*digest),
            });
        }
        if let Some(cmdline) = info.cmdline {
            return Err(UpdateError::UkiHasCmdline {
                digest: Box::new(*digest),
                cmdline,
            });
        }
        let file = BootFile {
            image_path: UKI_PATH.to_owned(),
            esp_name: "uki.efi",
            data,
        };
        return Ok((BootKind::Uki, vec![file]));
    }
    let no_files = || UpdateError::NoBootFiles {
        digest: Box::new(*digest),
    };
    let modules = lookup(tree, MODULES_DIR).ok_or_else(no_files)?;
    let mut kvers = Vec::new();
    for e in tree.entries(modules) {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let has = |f: &str| lookup(tree, &format!("{MODULES_DIR}/{name}/{f}")).is_some();
        if has("vmlinuz") && has("initramfs.img") {
            kvers.push(name);
        }
    }
    let kver = match (kver, kvers.len()) {
        (Some(k), _) if kvers.iter().any(|v| v == k) => k.to_owned(),
        (Some(_), _) | (None, 0) => return Err(no_files()),
        (None, 1) => kvers.remove(0),
        (None, _) => {
            return Err(UpdateError::SeveralKernels {
                digest: Box::new(*digest),
                kvers,
            })
        }
    };
    let mut files = Vec::new();
    for (f, esp_name) in [("vmlinuz", "vmlinuz"), ("initramfs.img", "initramfs.img")] {
        let image_path = format!("{MODULES_DIR}/{kver}/{f}");
        let data = read_file(root, tree, digest, &image_path, MAX_BOOT_FILE)?;
        files.push(BootFile {
            image_path,
            esp_name,
            data,
        });
    }
    Ok((BootKind::Kernel { kver }, files))
}

/// Create `dir` (with its parents) and remove the temporaries a killed
/// update left in it, before anything is written there.
fn prepare_dir(dir: &Path) -> Result<(), UpdateError> {
    std::fs::create_dir_all(dir).map_err(|error| StageError::Io {
        op: "create",
        path: dir.to_path_buf(),
        error,
    })?;
    fileio::remove_stale_temps(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_command_lines() {
        assert!(check_cmdline("console=ttyS0 root=LABEL=root rootfstype=ext4").is_ok());
        assert!(check_cmdline("").is_ok());
        for bad in [
            "root=/dev/vda composefs.digest=v1-sha256-12:00",
            "composefs=abc",
            "a\nb",
            "a\u{a0}b",
            "tab\there",
        ] {
            assert!(
                matches!(check_cmdline(bad), Err(UpdateError::BadCmdline { .. })),
                "{bad:?}"
            );
        }
    }
}
