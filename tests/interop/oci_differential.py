"""OCI differential against composefs-rs (issue 20): for each test image,
the composefs image digest `sealctl oci seal` computes equals the one
composefs-rs (`cfsctl` PEER_VERSION, built with its `oci` feature)
computes for the same OCI image layout.

The images, one umoci layout (`umoci` from real directories, as
tests/oci_layout.rs makes them; a crafted layer added with `umoci raw
add-layer`):

- `plain`: one gzip layer: small (inline) and large files, a symlink, a
  file with `security.capability` (setcap) and one with a `user.*` xattr,
  a character device, a fifo, a 120-byte directory name holding a 200-byte
  file name, set-id, sticky and odd modes, another owner. No hard links.
- `layers`: `plain` plus a second `umoci repack` layer: a directory and a
  file deleted (whiteouts), a file changed, a directory replaced by a file
  and a file by a directory, a new directory. For the directory it replaced
  by a file umoci 0.4.7 also writes a whiteout of the old child under the
  new file (`opt/old` then `opt/old/.wh.o`); sealctl (as runtimes) ignores
  it, composefs-rs refuses the layer ("Directory entry "old" is not a
  subdirectory"). So composefs-rs reads `layers-nowh`, the same image with
  that one whiteout dropped from the layer (config diff_id to match), and
  sealctl's digest of `layers-nowh` must equal its digest of `layers`.
  Likewise `crafted-nowh`, `crafted-zstd-nowh`.
- `crafted`: `layers` plus a third (PAX) layer written here: an opaque
  directory (`.wh..wh..opq`, listed before the directory's new entry), an
  explicit whiteout, a new file with a PAX mtime in nanoseconds and a
  `SCHILY.xattr.user.*` record.
- `crafted-zstd`: `crafted` with its last layer stored as zstd.
- `hardlinks`: `plain` plus a layer with a hard link inside the layer and
  one to a file of the first layer.

How composefs-rs reads a layout (composefs-oci 0.9.4): `cfsctl oci pull
oci:DIR:TAG` reads the layout itself (no skopeo), `cfsctl oci compute-id`
builds the image of the flattened root in memory and prints its digest;
`--erofs-version 0` asks for the format sealctl writes (C mkcomposefs's
default, `composefs_version` 0; the repository stays V1, as `oci pull`
into a V0 repository fails).
Its semantics differ from sealctl's in documented ways (docs/oci.md,
"composefs-rs"); each is either absent from an image (then the digests
must be equal as they are) or normalised explicitly:

- hard links: composefs-rs makes one inode with NLINK = the number of
  names, sealctl one inode a name (NLINK 1). For `hardlinks` the compare is
  of composefs-rs's dumpfile (`cfsctl oci dump`) with every hard link
  turned into a separate inode of the target's metadata and content and
  NLINK 1, built by `sealctl mkcomposefs --from-file`, against sealctl's
  digest; the raw digests must differ (else the normalisation is moot).
  The dumpfile path is itself checked first: the raw dump rebuilt must give
  composefs-rs's own digest.
- xattrs: composefs-rs keeps only `security.capability` by default;
  `--xattrs keep-user-xattrs` also keeps `user.*`, which is all the images
  carry, so compute-id and dump run with it.
- `/` gets `/usr`'s metadata and `/run` is emptied by composefs-rs: the
  images' `/` and `/usr` have the same metadata and no `/run`, so neither
  applies; the root line of both dumps is compared like every other.

Needs root (device nodes, setcap), `umoci`, `setcap`, `setfattr`, `zstd`.
"""

import os
import re
import shutil
import subprocess
import tarfile
import gzip
import io
import hashlib
import json
import time
from pathlib import Path

HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Tag suffix of an image with umoci's whiteouts under replaced directories
# dropped (without_whiteouts_under_files).
NORMALISED = "-nowh"
# composefs-rs's refusal of such a whiteout.
REFUSES_WH_UNDER_FILE = "is not a subdirectory"


def _run(cmd, **kw):
    # cfsctl's errors without a backtrace (RUST_BACKTRACE may be set).
    env = dict(os.environ, RUST_BACKTRACE="0")
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)


def _ok(r, what):
    if r.returncode != 0:
        raise RuntimeError(f"{what}: exit {r.returncode}: {(r.stdout + r.stderr).strip()[-400:]}")
    return r.stdout


def _sh(script, cwd):
    _ok(_run(["sh", "-euc", script], cwd=cwd), f"sh: {script.strip().splitlines()[0]}")


def _umoci(w, *args):
    _ok(_run(["umoci", *args], cwd=w), "umoci " + " ".join(args))


def _crafted_layer(entries, fmt=tarfile.GNU_FORMAT):
    """A tar of ENTRIES: (path, 'dir'|'file'|'link', data or link target[,
    PAX records])."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for path, kind, data, *pax in entries:
            ti = tarfile.TarInfo(path)
            ti.mtime = 1_700_000_000
            if pax:
                ti.pax_headers = dict(pax[0])
            ti.uid = ti.gid = 0
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "link":
                ti.type, ti.mode, ti.linkname = tarfile.LNKTYPE, 0o644, data
                t.addfile(ti)
            else:
                ti.mode, ti.size = 0o644, len(data)
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _blob(layout, digest):
    return Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]


def _manifest(layout, tag):
    index = json.loads((Path(layout) / "index.json").read_text())
    d = next(m for m in index["manifests"]
             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    return json.loads(_blob(layout, d["digest"]).read_bytes())


def _put_blob(layout, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, d).write_bytes(data)
    return d, len(data)


def _add_variant(layout, tag, new, tar_bytes, zstd=False):
    """Tag NEW = TAG with its last layer replaced by TAR_BYTES (stored as
    zstd if ZSTD, else uncompressed), the config's last diff_id with it."""
    manifest = _manifest(layout, tag)
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    config["rootfs"]["diff_ids"][-1] = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    cd, cs = _put_blob(layout, json.dumps(config).encode())
    manifest["config"].update({"digest": cd, "size": cs})
    if zstd:
        data = subprocess.run(["zstd", "-q", "-c", "-3"], input=tar_bytes, capture_output=True, check=True).stdout
        media = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        data, media = tar_bytes, "application/vnd.oci.image.layer.v1.tar"
    ld, ls = _put_blob(layout, data)
    manifest["layers"][-1].update({"mediaType": media, "digest": ld, "size": ls})
    md, ms = _put_blob(layout, json.dumps(manifest).encode())
    index_path = Path(layout) / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
                               "size": ms, "annotations": {"org.opencontainers.image.ref.name": new}})
    index_path.write_text(json.dumps(index))


def _last_layer_tar(layout, tag):
    """The uncompressed tar of TAG's last layer (gzip or plain)."""
    layer = _manifest(layout, tag)["layers"][-1]
    data = _blob(layout, layer["digest"]).read_bytes()
    return gzip.decompress(data) if layer["mediaType"].endswith("gzip") else data


def without_whiteouts_under_files(tar_bytes):
    """TAR_BYTES minus every whiteout `D/.wh.X` where this same layer made D
    a non-directory: under sealctl's (and the runtimes') rules it deletes
    nothing, composefs-rs refuses it ("… is not a subdirectory"), and umoci
    writes one for each child of a directory it replaced by a file. Returns
    (tar, number dropped)."""
    src = tarfile.open(fileobj=io.BytesIO(tar_bytes))
    members = src.getmembers()
    non_dirs = {m.name.rstrip("/") for m in members if not m.isdir()}
    out, dropped = io.BytesIO(), 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in members:
            parent, _, name = m.name.rstrip("/").rpartition("/")
            if name.startswith(".wh.") and parent in non_dirs:
                dropped += 1
                continue
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue(), dropped


def _same_root_and_usr(rootfs):
    """Give / the metadata of /usr (composefs-rs copies /usr's to /)."""
    os.chmod(rootfs, 0o755)
    os.chmod(rootfs / "usr", 0o755)
    os.chown(rootfs, 0, 0)
    os.chown(rootfs / "usr", 0, 0)
    os.utime(rootfs / "usr", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    os.utime(rootfs, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))


def make_layout(w):
    """The umoci layout W/L with the tags of the module docs."""
    w = Path(w)
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    _umoci(w, "init", "--layout", "L")
    _umoci(w, "new", "--image", "L:plain")
    _umoci(w, "unpack", "--image", "L:plain", "B1")
    long_dir, long_file = "d" * 120, "f" * 200
    rootfs = w / "B1" / "rootfs"
    _sh(f"""
mkdir -p etc/sub bin usr/share usr/lib dev var/lib/x opt/old "{long_dir}"
echo hello > etc/hostname
echo deep > etc/sub/file
echo keep > etc/keep
head -c 70000 /dev/urandom > usr/lib/tool
head -c 300 /dev/urandom > bin/ping
setcap cap_net_raw+ep bin/ping
setfattr -n user.note -v hello etc/hostname
ln -s ../etc/hostname bin/hn
mknod dev/null c 1 3
mkfifo dev/fifo
echo long > "{long_dir}/{long_file}"
printf 'exactly sixty-four bytes of data, inline in the image, no more.\\n' > usr/share/sixty4
head -c 65 /dev/zero > usr/share/sixty5
echo x > usr/share/suid && chmod 4755 usr/share/suid
chmod 1777 var/lib/x
chmod 0640 etc/keep
echo o > opt/old/o
echo plain > opt/file
chown 1000:1000 etc/keep
touch -d '2024-02-03 04:05:06.123456789' etc/hostname usr/share/sixty4
""", rootfs)
    _same_root_and_usr(rootfs)
    _umoci(w, "repack", "--image", "L:plain", "B1")

    _umoci(w, "unpack", "--image", "L:plain", "B2")
    rootfs = w / "B2" / "rootfs"
    _sh("""
rm -rf etc/sub
rm bin/hn
echo changed > etc/hostname
rm -rf opt/old && echo now-a-file > opt/old
rm opt/file && mkdir opt/file && echo inside > opt/file/inner
mkdir -p srv/new && head -c 9000 /dev/urandom > srv/new/blob
""", rootfs)
    _same_root_and_usr(rootfs)
    _umoci(w, "repack", "--image", "L:layers", "B2")

    crafted = _crafted_layer([
        ("etc", "dir", None),
        ("etc/.wh..wh..opq", "file", b""),
        ("etc/only", "file", b"only this\n"),
        ("srv", "dir", None),
        ("srv/added", "file", b"a file the third layer adds, larger than sixty-four bytes: inline no more\n",
         {"mtime": "1700000001.123456789", "SCHILY.xattr.user.crafted": "pax"}),
        ("usr/share/.wh.sixty5", "file", b""),
    ], tarfile.PAX_FORMAT)
    (w / "crafted.tar").write_bytes(crafted)
    _umoci(w, "raw", "add-layer", "--image", "L:layers", "--tag", "crafted", "crafted.tar")
    _add_variant(w / "L", "crafted", "crafted-zstd", crafted, zstd=True)
    # What composefs-rs is given where it refuses umoci's layer 2 (NORMALISED).
    tar2, dropped = without_whiteouts_under_files(_last_layer_tar(w / "L", "layers"))
    if dropped != 1:
        raise RuntimeError(f"umoci's layer 2 has {dropped} whiteouts under a replaced directory, not 1")
    _add_variant(w / "L", "layers", "layers" + NORMALISED, tar2)
    _umoci(w, "raw", "add-layer", "--image", "L:layers" + NORMALISED, "--tag", "crafted" + NORMALISED, "crafted.tar")
    _add_variant(w / "L", "crafted" + NORMALISED, "crafted-zstd" + NORMALISED, crafted, zstd=True)

    links = _crafted_layer([
        ("bin", "dir", None),
        ("bin/big", "file", b"B" * 5000),
        ("bin/big-hard", "link", "bin/big"),
        ("bin/tool-hard", "link", "usr/lib/tool"),
    ])
    (w / "links.tar").write_bytes(links)
    _umoci(w, "raw", "add-layer", "--image", "L:plain", "--tag", "hardlinks", "links.tar")
    return w / "L"


# ------------------------------------------------------------ comparing

# (tag, what it exercises); `hardlinks` is compared after normalisation,
# TAGS_NORMALISED are read by composefs-rs as TAG + NORMALISED.
IMAGES = [
    ("plain", "one layer: inline/external files, symlink, device, fifo, xattrs, long names, modes, owners"),
    ("layers", "second layer: whiteouts, changed file, dir<->file replacements"),
    ("crafted", "third layer: opaque dir, explicit whiteout"),
    ("crafted-zstd", "the third layer as zstd"),
    ("hardlinks", "hard links within a layer and across layers"),
]
TAGS_NORMALISED = ("layers", "crafted", "crafted-zstd")


def expand_hardlinks(dump):
    """composefs-rs's dumpfile with sealctl's hard-link semantics: every
    `@MODE` line becomes a copy of its target's line (own path), and every
    name of a linked inode gets NLINK 1. Returns (text, number of links)."""
    lines = dump.splitlines()
    fields = [l.split(" ") for l in lines]
    by_path = {f[0]: f for f in fields if not f[2].startswith("@")}
    out, linked = [], set()
    for f in fields:
        if f[2].startswith("@"):
            out.append([f[0]] + by_path[f[8]][1:])
            linked.update((f[0], f[8]))
        else:
            out.append(list(f))
    for f in out:
        if f[0] in linked:
            f[3] = "1"
    return "".join(" ".join(f) + "\n" for f in out), len(linked) - len({f[8] for f in fields if f[2].startswith("@")})


def _digest_of_dump(sealctl, path):
    out = _ok(_run([sealctl, "mkcomposefs", "--from-file", path, "--print-digest-only"]),
              f"sealctl mkcomposefs --from-file {path.name}").strip()
    if not HEX64.match(out):
        raise RuntimeError(f"sealctl mkcomposefs printed no digest: {out[:200]}")
    return out


def _first_differences(a, b, n=3):
    """Up to N lines that differ between dumpfiles A and B (by path)."""
    da = {l.split(" ", 1)[0]: l for l in a.splitlines()}
    db = {l.split(" ", 1)[0]: l for l in b.splitlines()}
    diffs = []
    for p in sorted(set(da) | set(db)):
        if da.get(p) != db.get(p):
            diffs.append(f"sealctl {da.get(p, '(absent)')[:160]!r} vs composefs-rs {db.get(p, '(absent)')[:160]!r}")
        if len(diffs) == n:
            break
    return diffs


def compare(sealctl, cfsctl, layout, tag, work, key):
    """Errors (empty: equal) and a note for one image."""
    work = Path(work)
    errs = []
    # sealctl: the digest of the flattened root, mtimes as found.
    srepo = work / f"sealctl-{tag}"
    shutil.rmtree(srepo, ignore_errors=True)
    out = _ok(_run([sealctl, "oci", "seal", "--image", f"oci:{layout}:{tag}", "--key", key, "--no-created",
                    "--repo", srepo]), f"sealctl oci seal {tag}")
    m = re.search(r"^digest ([0-9a-f]{64})$", out, re.M)
    if not m:
        raise RuntimeError(f"sealctl oci seal printed no digest: {out[:200]}")
    s_hex = m.group(1)
    s_dump = _ok(_run([sealctl, "dump", srepo / "composefs" / "images" / s_hex]), "sealctl dump")

    # composefs-rs: pull the layout (read directly, no skopeo), then the
    # digest of its flattened root as a V0 (C mkcomposefs) image, keeping
    # user.* xattrs.
    crepo = work / f"cfsctl-{tag}"
    shutil.rmtree(crepo, ignore_errors=True)
    cfs = [cfsctl, "--repo", crepo]
    # The repository keeps composefs-rs's default format (V1): `oci pull`
    # into one made with `--erofs-version 0` fails ("commit_images did not
    # produce the repository's default EROFS format"); compute-id is asked
    # for V0 with the global flag.
    _ok(_run(cfs + ["init", "--algorithm", "fsverity-sha256-12", "--insecure"]), "cfsctl init")
    note = f"sealctl {s_hex[:16]}…"
    r = _run(cfs + ["oci", "pull", f"oci:{layout}:{tag}", tag])
    if r.returncode != 0 and REFUSES_WH_UNDER_FILE in r.stderr and tag in TAGS_NORMALISED:
        # composefs-rs refuses umoci's whiteouts under a directory the same
        # layer replaced by a file (docs/oci.md): it reads the layout
        # without them, which must be the same image under sealctl's rules.
        ntag = tag + NORMALISED
        (work / f"seal-{ntag}").mkdir(exist_ok=True)
        out = _ok(_run([sealctl, "oci", "seal", "--image", f"oci:{layout}:{ntag}", "--key", key, "--no-created",
                        "--out", work / f"seal-{ntag}"]), f"sealctl oci seal {ntag}")
        if f"digest {s_hex}" not in out:
            errs.append(f"sealctl: {ntag} (whiteouts under replaced directories dropped) is not the image of {tag}")
        r = _run(cfs + ["oci", "pull", f"oci:{layout}:{ntag}", tag])
        note += f"; composefs-rs refuses {tag} ('{REFUSES_WH_UNDER_FILE}'), reads {ntag}"
    _ok(r, f"cfsctl oci pull oci:…:{tag}")
    opts = ["--xattrs", "keep-user-xattrs", tag]
    c_hex = _ok(_run(cfs + ["--erofs-version", "0", "oci", "compute-id", *opts]), "cfsctl oci compute-id").strip()
    if not HEX64.match(c_hex):
        raise RuntimeError(f"cfsctl oci compute-id printed no digest: {c_hex[:200]}")
    c_dump = _ok(_run(cfs + ["oci", "dump", *opts]), "cfsctl oci dump")
    raw = work / f"cfsctl-{tag}.dump"
    raw.write_text(c_dump)
    # The dumpfile stands for composefs-rs's image: rebuilt, same digest.
    rebuilt = _digest_of_dump(sealctl, raw)
    if rebuilt != c_hex:
        errs.append(f"composefs-rs's dumpfile rebuilt by sealctl mkcomposefs gives {rebuilt[:16]}…, "
                    f"its compute-id {c_hex[:16]}… (writers disagree)")

    norm, n_links = expand_hardlinks(c_dump)
    if n_links:
        normf = work / f"cfsctl-{tag}.norm.dump"
        normf.write_text(norm)
        n_hex = _digest_of_dump(sealctl, normf)
        if n_hex != s_hex:
            errs.append(f"after expanding {n_links} hard links: composefs-rs {n_hex[:16]}… != sealctl {s_hex[:16]}…")
        if c_hex == s_hex:
            errs.append("digests equal although composefs-rs keeps hard links as one inode (docs/oci.md says they differ)")
        note += f"; = composefs-rs after expanding {n_links} hard links (raw composefs-rs {c_hex[:16]}…)"
        want_dump = norm
    else:
        if c_hex != s_hex:
            errs.append(f"composefs-rs {c_hex[:16]}… != sealctl {s_hex[:16]}…")
        note += "; = composefs-rs"
        want_dump = c_dump
    if errs:
        # Say where: sealctl's printing of both images.
        img = work / f"cfsctl-{tag}.img"
        src = work / f"cfsctl-{tag}.cmp.dump"
        src.write_text(want_dump)
        r = _run([sealctl, "mkcomposefs", "--from-file", src, img])
        if r.returncode == 0:
            cd = _run([sealctl, "dump", img]).stdout
            errs += _first_differences(s_dump, cd)
    return errs, note, s_hex, c_hex


def run(res, sealctl, cfsctl, work, key, why_missing=None):
    """The differential scenarios, reported through RES (tests/interop/run's
    Results). CFSCTL None: each is missing (WHY_MISSING)."""
    names = [f"D-oci-cfsctl-{tag}" for tag, _ in IMAGES]
    if not cfsctl:
        for n in names:
            res.missing(n, why_missing or "no cfsctl")
        return
    missing = [t for t in ("umoci", "setcap", "setfattr", "zstd") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root (device nodes, security.capability)")
    if missing:
        for n in names:
            res.missing(n, "needs " + ", ".join(missing))
        return
    work = Path(work)
    t0 = time.monotonic()
    try:
        layout = make_layout(work / "layout")
    except Exception as e:  # noqa: BLE001 - the fixture failing is every scenario's failure
        for n in names:
            res.report(n, [f"making the umoci layout: {e}"])
        return
    t_layout = time.monotonic() - t0
    for (tag, what), name in zip(IMAGES, names):
        t = time.monotonic()
        try:
            errs, note, _, _ = compare(sealctl, cfsctl, layout, tag, work, key)
        except Exception as e:  # noqa: BLE001
            errs, note = [str(e)], ""
        res.report(name, errs, time.monotonic() - t, note=f"; {note}" if note else "")
    print(f"== OCI differential took {time.monotonic() - t0:.0f} s (layout {t_layout:.0f} s)", flush=True)
