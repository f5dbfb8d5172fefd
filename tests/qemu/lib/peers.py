"""composefs-rs peers from crates.io, installed once and reused.

`composefs-setup-root` and `composefs-ctl` (which provides `cfsctl`),
version PEER_VERSION, are installed with `cargo install --locked --root
build/peers` the first time something asks for them and reused while
cargo's own record (build/peers/.crates2.json) names that version and the
features asked for (cfsctl: `oci`). The
interop suite (tests/interop/run) and the boot bench (bootbench.py, run by
`scripts/bench boot`) both get their peers here, so they run the same
binaries.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import sealqemu as q
import scenarios as s

PEER_VERSION = "0.9.4"
PEERS = q.BUILD / "peers"
# (crate, binary, cargo features). cfsctl's other default features
# (containers-storage, ostree, FUSE) are not needed to build a repository
# from a directory or to read an OCI image layout (`oci`, the OCI
# differential of tests/interop/oci_differential.py) and triple the build;
# with `oci` the first install took 8.5 min on 2 cores shared with a build.
PEER_CRATES = [
    ("composefs-setup-root", "composefs-setup-root", None),
    ("composefs-ctl", "cfsctl", ["oci"]),
]


def installed_peers():
    """crate -> (version, features, no_default_features), from cargo's own
    record of build/peers."""
    f = PEERS / ".crates2.json"
    if not f.exists():
        return {}
    try:
        installs = json.loads(f.read_text()).get("installs", {})
    except ValueError:
        return {}
    have = {}
    for key, rec in installs.items():
        m = re.match(r"(\S+) (\S+) \(", key)
        if m:
            have[m.group(1)] = (m.group(2), set(rec.get("features") or ()),
                                bool(rec.get("no_default_features")))
    return have


def _wanted(have, crate, features):
    """Whether HAVE records CRATE at PEER_VERSION built with FEATURES (None:
    the crate's defaults; a list: no defaults, these features at least)."""
    if crate not in have or have[crate][0] != PEER_VERSION:
        return False
    if features is None:
        return not have[crate][2]
    return set(features) <= have[crate][1]


def ensure_peers(log_dir, binaries=None):
    """Install the pinned peers (all, or only those named in BINARIES) into
    build/peers unless already there; cargo's output goes to LOG_DIR.
    Returns {binary: path or None} and {binary: reason} for those missing.
    INTEROP_NO_INSTALL=1 uses only what is already installed."""
    have = installed_peers()
    bins, why = {}, {}
    for crate, binary, features in PEER_CRATES:
        if binaries is not None and binary not in binaries:
            continue
        path = PEERS / "bin" / binary
        extra = [] if features is None else ["--no-default-features", "--features", ",".join(features)]
        if not _wanted(have, crate, features) or not path.exists():
            if os.environ.get("INTEROP_NO_INSTALL"):
                why[binary] = f"{crate} {PEER_VERSION} is not in {PEERS} and INTEROP_NO_INSTALL is set"
                bins[binary] = None
                continue
            if not shutil.which("cargo"):
                why[binary] = "cargo is not installed"
                bins[binary] = None
                continue
            print(f"== cargo install {crate}@{PEER_VERSION} into {PEERS} (first run only; minutes)", flush=True)
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            logf = Path(log_dir) / f"cargo-install-{crate}.log"
            # Cargo's own temporary target directory, not the project's.
            env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
            with open(logf, "w") as lf:
                r = subprocess.run(["cargo", "install", "--locked", "--root", str(PEERS), *extra,
                                    f"{crate}@{PEER_VERSION}"], stdout=lf, stderr=subprocess.STDOUT, env=env)
            if r.returncode != 0 or not path.exists():
                tail = logf.read_text(errors="replace").strip().splitlines()[-3:]
                why[binary] = f"cargo install {crate}@{PEER_VERSION} failed: {' | '.join(tail)} (log {logf})"
                bins[binary] = None
                continue
        bins[binary] = path
    return bins, why


def add_dynamic(c, binary, dest):
    """Put a dynamically linked BINARY at DEST in cpio C with its libraries
    at the paths the loader looks them up (glibc, libgcc_s, openssl...)."""
    c.file(dest, Path(binary), 0o755)
    for lib in s._ldd_libs(str(binary)):
        c.file(lib.lstrip("/"), Path(os.path.realpath(lib)), 0o755)
