//! Fixed trees for the inputs the generator leaves out, one per reason.
//!
//! For each, sealroot must do what the C reference does (checked here on
//! sealroot's image, read back with its own reader), and where composefs-rs
//! can take the input at all, its image must still differ: if a later
//! composefs-rs stopped differing, the exclusion could be lifted. Each probe
//! names the C source it follows.

use composefs::erofs::format::FormatVersion;
use sealroot::image::dumpfile;
use sealroot::image::erofs::reader::{Image, Inode};
use sealroot::image::erofs::{write_image, WriteOptions};

fn v(n: u32) -> WriteOptions {
    WriteOptions {
        min_version: n,
        max_version: n,
    }
}

fn sealroot_image(dump: &str, opts: WriteOptions) -> Result<Vec<u8>, String> {
    let tree = dumpfile::parse(dump.as_bytes(), true).map_err(|e| format!("parse: {e}"))?;
    write_image(&tree, &opts).map_err(|e| format!("write: {e}"))
}

fn composefs_rs_image(dump: &str, version: FormatVersion) -> Result<Vec<u8>, String> {
    crate::cfs::image(crate::cfs::filesystem_from_dumpfile(dump)?, version)
}

/// The inode at `path` (`/a/b`) of image `img`.
fn lookup(img: &[u8], path: &str) -> Result<Inode, String> {
    let image = Image::open(img).map_err(|e| e.to_string())?;
    let mut ino = image.inode(image.sb.root_nid).map_err(|e| e.to_string())?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let mut budget = 100_000;
        let entries = image
            .dir_entries(&ino, &mut budget, 100_000)
            .map_err(|e| e.to_string())?;
        let e = entries
            .iter()
            .find(|e| e.name == comp.as_bytes())
            .ok_or_else(|| format!("{path}: no entry {comp}"))?;
        ino = image.inode(e.nid).map_err(|e| e.to_string())?;
    }
    Ok(ino)
}

/// The xattrs of the inode at `path`, as stored (shared first).
fn xattrs(img: &[u8], path: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let image = Image::open(img).map_err(|e| e.to_string())?;
    let ino = lookup(img, path)?;
    Ok(image
        .xattrs(&ino)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|x| {
            (
                String::from_utf8_lossy(&x.name).into_owned(),
                x.value.to_vec(),
            )
        })
        .collect())
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// A writer-set marker replaces an input xattr of the same (escaped) name.
/// C: `add_overlayfs_xattrs` (lcfs-writer-erofs.c) first escapes the
/// node's own `trusted.overlay.*` xattrs, then sets the whiteout markers
/// with `lcfs_node_set_xattr`, which replaces an existing value
/// (lcfs-writer.c: "Already set, replace"). composefs-rs appends a second
/// entry of the same name.
fn marker_replaces_input_xattr() -> Result<(), String> {
    let dump = "/ 0 40755 2 0 0 0 0.0 - - -\n\
                /d 0 40755 2 0 0 0 0.0 - - - trusted.overlay.opaque=abc user.overlay.whiteouts=zz\n\
                /d/w 0 20644 1 0 0 0 0.0 - - - user.overlay.whiteout=q trusted.overlay.whiteout=r\n";
    let img = sealroot_image(dump, v(1))?;
    let dir = xattrs(&img, "/d")?;
    let want_dir = [
        ("trusted.overlay.overlay.opaque", &b"x"[..]),
        ("trusted.overlay.overlay.whiteouts", b""),
        ("user.overlay.opaque", b"x"),
        ("user.overlay.whiteouts", b""),
    ];
    for (name, value) in want_dir {
        let found: Vec<_> = dir.iter().filter(|(k, _)| k == name).collect();
        check(found.len() == 1 && found[0].1 == value, || {
            format!("/d: want exactly one {name}={value:?}, have {dir:?}")
        })?;
    }
    let w = xattrs(&img, "/d/w")?;
    for name in ["trusted.overlay.overlay.whiteout", "user.overlay.whiteout"] {
        let found: Vec<_> = w.iter().filter(|(k, _)| k == name).collect();
        check(found.len() == 1 && found[0].1.is_empty(), || {
            format!("/d/w: want exactly one empty {name}, have {w:?}")
        })?;
    }
    let theirs = composefs_rs_image(dump, FormatVersion::V1)?;
    check(theirs != img, || {
        "composefs-rs now matches: lift the marker exclusion in model.rs".into()
    })
}

/// An input whiteout at the root named like a stub is escaped like any
/// other. C: `rewrite_tree_for_erofs` escapes every input whiteout
/// (`rewrite_tree_node_for_erofs` → `add_overlayfs_xattrs`) before
/// `add_overlay_whiteouts` adds the `00`..`ff` stubs, skipping taken
/// names; and `lcfs_write_update_version` raises the default version to 1
/// for it. composefs-rs takes a root whiteout with a stub's name, mode,
/// owner, mtime and xattrs for its own stub and leaves it a bare device.
fn stub_lookalike_is_escaped() -> Result<(), String> {
    let dump = "/ 0 40755 2 0 0 0 5.0 - - -\n/d9 0 20644 1 0 0 0 5.0 - - -\n";
    let img = sealroot_image(dump, v(0))?;
    let ino = lookup(&img, "/d9")?;
    check(ino.mode == 0o100644, || {
        format!(
            "/d9: mode {:o}, want an escaped whiteout (100644)",
            ino.mode
        )
    })?;
    let x = xattrs(&img, "/d9")?;
    check(
        x.iter()
            .any(|(k, _)| k == "trusted.overlay.overlay.whiteout"),
        || format!("/d9 is not marked as an escaped whiteout: {x:?}"),
    )?;
    let default = sealroot_image(dump, WriteOptions::default())?;
    check(default[12..16] == 1u32.to_le_bytes(), || {
        "default options did not raise the version to 1 for the whiteout".into()
    })?;
    let theirs = composefs_rs_image(dump, FormatVersion::V0)?;
    check(theirs != img, || {
        "composefs-rs now matches: lift the stub look-alike exclusion in model.rs".into()
    })
}

/// NLINK of a non-directory is kept from the dumpfile. C: mkcomposefs.c
/// `tree_from_dump_line` calls `lcfs_node_set_nlink(node, nlink)` and
/// `tree_resolve_hardlinks` keeps it ("Don't override existing value");
/// only directories are recomputed (`lcfs_compute_tree`). composefs-rs has
/// no link count in its tree: it counts entries. The generator writes the
/// entry count, as a dump of a whole tree has.
fn nlink_is_kept_from_dumpfile() -> Result<(), String> {
    let dump = "/ 0 40755 7 0 0 0 0.0 - - -\n\
                /f 0 100644 5 0 0 0 0.0 - - -\n\
                /g 0 @100644 0 0 0 0 0.0 /f - -\n";
    let img = sealroot_image(dump, v(0))?;
    let f = lookup(&img, "/f")?;
    check(f.nlink == 5, || format!("/f: nlink {}, want 5", f.nlink))?;
    let root = lookup(&img, "/")?;
    check(root.nlink == 2, || {
        format!("/: nlink {}, want 2", root.nlink)
    })?;
    let theirs = composefs_rs_image(dump, FormatVersion::V0)?;
    check(theirs != img, || {
        "composefs-rs now keeps NLINK: the generator could vary it".into()
    })
}

/// At most 128 shared xattr references per inode, the rest stay inline.
/// C: `compute_erofs_shared_xattrs` shares a (name, value) only while
/// `n_shared < EROFS_XATTR_LONG_PREFIX` (0x80) for that inode. composefs-rs
/// shares all of them. The generator keeps inodes under 40 xattrs.
fn shared_xattrs_capped_at_128() -> Result<(), String> {
    let xs: String = (0..130).map(|i| format!(" user.k{i:03}=v")).collect();
    let dump = format!(
        "/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -{xs}\n/b 0 100644 1 0 0 0 0.0 - - -{xs}\n"
    );
    let img = sealroot_image(&dump, v(0))?;
    for path in ["/a", "/b"] {
        let ino = lookup(&img, path)?;
        // Byte 4 of the xattr body header is the shared count.
        let hdr = ino.nid as usize * 32 + if ino.extended { 64 } else { 32 };
        check(img[hdr + 4] == 128, || {
            format!("{path}: {} shared xattrs, want 128", img[hdr + 4])
        })?;
        let n = xattrs(&img, path)?.len();
        check(n == 130, || format!("{path}: {n} xattrs, want 130"))?;
    }
    let theirs = composefs_rs_image(&dump, FormatVersion::V0)?;
    check(theirs != img, || {
        "composefs-rs now caps shared xattrs: the generator could go past 128".into()
    })
}

/// PAYLOAD and DIGEST are independent: the redirect is `/` + PAYLOAD, the
/// metacopy carries DIGEST, either may be absent. C: `add_overlayfs_xattrs`.
/// composefs-rs's tree can only redirect to the digest's own object path
/// (and always does), so the generator pairs them that way or leaves the
/// digest out.
fn payload_and_digest_are_independent() -> Result<(), String> {
    let d = "ab".repeat(32);
    let dump = format!(
        "/ 0 40755 2 0 0 0 0.0 - - -\n\
         /a 10 100644 1 0 0 0 0.0 some/where - {d}\n\
         /b 10 100644 1 0 0 0 0.0 - - {d}\n"
    );
    let img = sealroot_image(&dump, v(0))?;
    let a = xattrs(&img, "/a")?;
    let mut metacopy = vec![0u8, 36, 0, 1];
    metacopy.extend([0xab; 32]);
    check(
        a.contains(&("trusted.overlay.redirect".into(), b"/some/where".to_vec()))
            && a.contains(&("trusted.overlay.metacopy".into(), metacopy.clone())),
        || format!("/a: {a:?}"),
    )?;
    let b = xattrs(&img, "/b")?;
    check(
        !b.iter().any(|(k, _)| k == "trusted.overlay.redirect")
            && b.contains(&("trusted.overlay.metacopy".into(), metacopy)),
        || format!("/b: {b:?}"),
    )
}

pub fn run() -> Vec<(&'static str, Result<(), String>)> {
    vec![
        ("marker_replaces_input_xattr", marker_replaces_input_xattr()),
        ("stub_lookalike_is_escaped", stub_lookalike_is_escaped()),
        ("nlink_is_kept_from_dumpfile", nlink_is_kept_from_dumpfile()),
        ("shared_xattrs_capped_at_128", shared_xattrs_capped_at_128()),
        (
            "payload_and_digest_are_independent",
            payload_and_digest_are_independent(),
        ),
    ]
}
