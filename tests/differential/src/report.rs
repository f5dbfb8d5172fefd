//! Where two images differ, in EROFS terms: header, superblock field, which
//! inode (by nid and path, from sealroot's image) or which data block.

use std::fmt::Write as _;

use sealroot::image::erofs::reader::Image;

const SB: usize = 1024;

fn superblock_field(off: usize) -> &'static str {
    match off - SB {
        0..=3 => "magic",
        4..=7 => "checksum",
        8..=11 => "feature_compat",
        12 => "blkszbits",
        13 => "sb_extslots",
        14..=15 => "root_nid",
        16..=23 => "inos",
        24..=31 => "build_time",
        32..=35 => "build_time_nsec",
        36..=39 => "blocks",
        40..=43 => "meta_blkaddr",
        44..=47 => "xattr_blkaddr",
        _ => "reserved",
    }
}

/// Every inode reachable in `img` as (nid, path), sorted by nid.
fn inode_paths(img: &[u8]) -> Vec<(u64, String)> {
    walk(img).0
}

/// [`inode_paths`] and the number of entries naming an inode already seen
/// (hard links).
fn walk(img: &[u8]) -> (Vec<(u64, String)>, u64) {
    let mut links = 0;
    let Ok(image) = Image::open(img) else {
        return (Vec::new(), 0);
    };
    let mut out = vec![(image.sb.root_nid, "/".to_string())];
    let mut queue = vec![(image.sb.root_nid, String::new())];
    let mut seen = std::collections::HashSet::new();
    seen.insert(image.sb.root_nid);
    let mut budget = 1_000_000u64;
    while let Some((nid, path)) = queue.pop() {
        let Ok(ino) = image.inode(nid) else { continue };
        if ino.file_type() != 0o040000 {
            continue;
        }
        let Ok(entries) = image.dir_entries(&ino, &mut budget, 1_000_000) else {
            continue;
        };
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if !seen.insert(e.nid) {
                links += 1;
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8_lossy(e.name).escape_debug());
            out.push((e.nid, p.clone()));
            queue.push((e.nid, p));
        }
    }
    out.sort();
    (out, links)
}

/// A human description of how `ours` (sealroot) and `theirs` (composefs-rs)
/// differ: lengths, the differing byte ranges, and what lives at the first.
pub fn describe(ours: &[u8], theirs: &[u8]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  sizes: sealroot {} bytes, composefs-rs {} bytes",
        ours.len(),
        theirs.len()
    );
    let n = ours.len().min(theirs.len());
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < n {
        if ours[i] != theirs[i] {
            let start = i;
            while i < n && ours[i] != theirs[i] {
                i += 1;
            }
            ranges.push((start, i));
        } else {
            i += 1;
        }
    }
    let _ = writeln!(
        s,
        "  {} differing range(s) in the common prefix{}",
        ranges.len(),
        if ranges.len() > 8 { "; first 8:" } else { ":" }
    );
    let paths = inode_paths(ours);
    for &(a, b) in ranges.iter().take(8) {
        let _ = writeln!(
            s,
            "    [{a:#x}, {b:#x}) {}: sealroot {} / composefs-rs {}",
            locate(ours, &paths, a),
            hexdump(&ours[a..b.min(a + 16)]),
            hexdump(&theirs[a..b.min(a + 16)]),
        );
    }
    if ranges.is_empty() && ours.len() != theirs.len() {
        let _ = writeln!(s, "    identical up to {n:#x}, then one image ends");
    }
    s
}

fn hexdump(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn locate(img: &[u8], paths: &[(u64, String)], off: usize) -> String {
    if off < 32 {
        return "composefs header".into();
    }
    if off < SB {
        return "header padding".into();
    }
    if off < SB + 128 {
        return format!("superblock {}", superblock_field(off));
    }
    let (xattr_blkaddr, blocks) = match Image::open(img) {
        Ok(i) => (
            u64::from(i.sb.xattr_blkaddr),
            u64::from(u32::from_le_bytes(
                img[SB + 36..SB + 40].try_into().unwrap(),
            )),
        ),
        Err(_) => (0, 0),
    };
    let _ = blocks;
    let nid = off as u64 / 32;
    // The inode whose slot starts at or before `off`.
    match paths.iter().rev().find(|(n, _)| *n <= nid) {
        Some((n, p))
            if off as u64 >= 1152
                && (xattr_blkaddr == 0 || off as u64 / 4096 <= xattr_blkaddr + 1) =>
        {
            format!(
                "metadata: {} bytes into inode nid {n} ({p}) or what follows it (shared xattrs start in block {xattr_blkaddr})",
                off as u64 - n * 32
            )
        }
        _ => format!("data block {} (+{:#x})", off / 4096, off % 4096),
    }
}

/// Count what an image exercises, by reading it back with sealroot's
/// reader: the summary shows the generator reaches the layout corners.
pub fn features(img: &[u8], counts: &mut std::collections::BTreeMap<&'static str, u64>) {
    let Ok(image) = Image::open(img) else {
        *counts.entry("unreadable image").or_default() += 1;
        return;
    };
    let (paths, links) = walk(img);
    *counts.entry("hard links").or_default() += links;
    let mut bump = |k: &'static str| *counts.entry(k).or_default() += 1;
    if image.sb.composefs_flags & 1 != 0 {
        bump("images with ACLs");
    }
    let mut any_shared = false;
    for (nid, _) in &paths {
        let Ok(ino) = image.inode(*nid) else { continue };
        bump(if ino.extended {
            "extended inodes"
        } else {
            "compact inodes"
        });
        let isize = if ino.extended { 64 } else { 32 };
        let hdr = (*nid as usize) * 32 + isize;
        let icount = u16::from_le_bytes([img[*nid as usize * 32 + 2], img[*nid as usize * 32 + 3]]);
        if icount > 0 && img.get(hdr + 4).is_some_and(|&c| c > 0) {
            any_shared = true;
        }
        if icount as usize * 4 > 4096 {
            bump("inodes with over 4 KiB of xattrs");
        }
        let big = ino.size > 4096;
        match (ino.file_type(), ino.layout) {
            (0o040000, 0) if ino.size > 0 => bump("directories only in blocks"),
            (0o040000, 2) if big => bump("directories in blocks + inline tail"),
            (0o100000, 0) if ino.size > 0 => bump("inline files only in blocks"),
            (0o100000, 2) if big => bump("inline files in blocks + tail"),
            (0o100000, 2) => bump("inline files, tail only"),
            (0o100000, 4) if ino.size > 1023 << 43 => bump("external files with 1024 chunks"),
            (0o100000, 4) if ino.size > 1 << 43 => bump("external files with several chunks"),
            (0o100000, 4) if ino.size > u64::from(u32::MAX) => bump("external files over 4 GiB"),
            (0o120000, 0) => bump("symlinks with the target in a block"),
            (0o120000, 2) if ino.size > 2048 => bump("inline symlinks over 2 KiB"),
            (0o020000, _) if ino.i_u == 0 => {} // the root's whiteout stubs
            (0o020000 | 0o060000, _) => bump("device nodes"),
            (0o100000, 0) if ino.size == 0 && icount > 0 => {
                bump("files with xattrs or escaped whiteouts")
            }
            (0o010000 | 0o140000, _) => bump("fifos and sockets"),
            _ => {}
        }
    }
    if any_shared {
        bump("images with shared xattrs");
    }
}
