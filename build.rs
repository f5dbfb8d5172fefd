//! Build script: compile the trusted public keys into `sealroot`.
//!
//! Inputs (all optional; see docs/uki.md "Key embedding for packagers"):
//! - `SEALROOT_TRUSTED_KEYS`: colon-separated paths of ed25519 public keys in
//!   SubjectPublicKeyInfo PEM (`openssl pkey -pubout`). Relative paths are taken
//!   from the package root. When set (even empty) it replaces the default set.
//! - otherwise every `keys/trusted/*.pub.pem`, in file-name order.
//! - feature `test-keys`: additionally `keys/test/sealroot-test.pub.pem`.
//! - `SEALROOT_SERIAL_FLOOR`: the compiled-in minimum seal serial (u64, default 0).
//! - feature `sealed-digest`: the compiled-in policy is sealed-digest (no keys).
//!   Combined with a non-zero `SEALROOT_SERIAL_FLOOR` the build fails: that
//!   policy checks no seal, so the floor could never be enforced.
//! - `SEALROOT_CMDLINE_ALLOW`: whitespace-separated kernel command-line
//!   allowlist entries added to the defaults (`src/boot/policy.rs`).
//! - `SEALROOT_INITS`: colon-separated absolute paths replacing the default
//!   init list. Both are validated again at run time (fail closed).
//! - `SEALROOT_TPM_PCR`: the PCR the boot record is extended into (8..=15,
//!   default 15; see `src/tpm.rs`).
//! - `SEALROOT_TPM_REQUIRED`: `1`/`true` refuses a boot without a working
//!   TPM; `0`/`false`/unset measures when a TPM exists and goes on otherwise.
//! - `SEALROOT_TPM_FLOOR_INDEX`: the TPM NV counter holding the serial floor
//!   (hex `0x…` or decimal, in 0x01000000..=0x01FFFFFF; `0` or `off`: no
//!   TPM floor; default 0x01805ea1, see `src/tpm/nv.rs`).
//! - `SEALROOT_REQUIRE_TPM_FLOOR`: `1`/`true` refuses a boot that cannot read
//!   the TPM floor (no TPM, no index); default: such a boot goes on without it.
//!
//! Output: `$OUT_DIR/trusted_keys.rs`, included by `src/boot/trust.rs`, holding the
//! raw 32-byte keys. This script deliberately shares no code with the crate
//! (it runs before the crate exists), so it decodes the PEM itself: base64 of
//! a 44-byte DER SubjectPublicKeyInfo whose first 12 bytes are the fixed
//! ed25519 prefix `30 2a 30 05 06 03 2b 65 70 03 21 00` (SEQUENCE, AlgorithmIdentifier
//! with OID 1.3.101.112, BIT STRING of 33 bytes with 0 unused bits), followed
//! by the 32 key bytes. Anything else fails the build with a message naming
//! the file, so a packager never ships a binary silently missing its key.
//! Whether the 32 bytes are a valid curve point is checked at run time by
//! `trust::load` (fail closed), since this script has no ed25519 code.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";
const TEST_KEY: &str = "keys/test/sealroot-test.pub.pem";
const MAX_KEY_FILE: u64 = 64 * 1024;

fn fail(message: &str) -> ! {
    eprintln!("error: sealroot build: {message}");
    std::process::exit(1);
}

fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Strict base64 (standard alphabet, `=` padding only at the end), with
/// whitespace between characters ignored as PEM line breaks require.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let chars: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if chars.is_empty() || chars.len() % 4 != 0 {
        return Err(format!(
            "base64 body has {} characters, not a non-zero multiple of 4",
            chars.len()
        ));
    }
    let padding = chars.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return Err("base64 body has more than two '=' padding characters".into());
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    let data_len = chars.len() - padding;
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, &c) in chars.iter().enumerate() {
        if i >= data_len {
            break;
        }
        let v = base64_value(c)
            .ok_or_else(|| format!("invalid base64 character {:?} at {i}", c as char))?;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err("base64 body has non-zero trailing bits".into());
    }
    Ok(out)
}

/// The raw 32 key bytes of one ed25519 SubjectPublicKeyInfo PEM file.
fn parse_public_pem(text: &str) -> Result<[u8; 32], String> {
    let begin = text
        .find(PEM_BEGIN)
        .ok_or_else(|| format!("no '{PEM_BEGIN}' line (is this a public key?)"))?;
    let body_start = begin + PEM_BEGIN.len();
    let rest = &text[body_start..];
    let end = rest
        .find(PEM_END)
        .ok_or_else(|| format!("no '{PEM_END}' line"))?;
    if rest[end + PEM_END.len()..].contains("-----BEGIN") {
        return Err("more than one PEM block; use one key per file".into());
    }
    let der = base64_decode(&rest[..end])?;
    if der.len() != ED25519_SPKI_PREFIX.len() + 32 {
        return Err(format!(
            "DER SubjectPublicKeyInfo is {} bytes; an ed25519 key is 44",
            der.len()
        ));
    }
    if der[..12] != ED25519_SPKI_PREFIX {
        return Err("not an ed25519 SubjectPublicKeyInfo (wrong algorithm or encoding)".into());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&der[12..]);
    Ok(key)
}

fn read_key(path: &Path) -> [u8; 32] {
    let meta = std::fs::metadata(path)
        .unwrap_or_else(|e| fail(&format!("trusted key {}: {e}", path.display())));
    if meta.len() > MAX_KEY_FILE {
        fail(&format!(
            "trusted key {}: {} bytes is too large for a public key PEM",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(&format!("trusted key {}: {e}", path.display())));
    parse_public_pem(&text)
        .unwrap_or_else(|e| fail(&format!("trusted key {}: {e}", path.display())))
}

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    // The whole keys/ directory: cargo rescans it recursively, which covers
    // keys/trusted/ appearing later and the test key. (A missing path would
    // make cargo rerun this script, and recompile the crate, on every build.)
    println!("cargo:rerun-if-changed=keys");
    println!("cargo:rerun-if-env-changed=SEALROOT_TRUSTED_KEYS");
    println!("cargo:rerun-if-env-changed=SEALROOT_SERIAL_FLOOR");
    println!("cargo:rerun-if-env-changed=SEALROOT_CMDLINE_ALLOW");
    println!("cargo:rerun-if-env-changed=SEALROOT_INITS");
    println!("cargo:rerun-if-env-changed=SEALROOT_TPM_PCR");
    println!("cargo:rerun-if-env-changed=SEALROOT_TPM_REQUIRED");
    println!("cargo:rerun-if-env-changed=SEALROOT_TPM_FLOOR_INDEX");
    println!("cargo:rerun-if-env-changed=SEALROOT_REQUIRE_TPM_FLOOR");

    let mut paths: Vec<PathBuf> = Vec::new();
    match std::env::var("SEALROOT_TRUSTED_KEYS") {
        Ok(list) => {
            for p in list.split(':').filter(|p| !p.is_empty()) {
                let path = root.join(p);
                println!("cargo:rerun-if-changed={}", path.display());
                paths.push(path);
            }
        }
        Err(std::env::VarError::NotUnicode(_)) => fail("SEALROOT_TRUSTED_KEYS is not valid UTF-8"),
        Err(std::env::VarError::NotPresent) => {
            let dir = root.join("keys/trusted");
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.ends_with(".pub.pem"))
                    })
                    .collect();
                found.sort();
                paths.extend(found);
            }
        }
    }
    if std::env::var_os("CARGO_FEATURE_TEST_KEYS").is_some() {
        let path = root.join(TEST_KEY);
        if !path.exists() {
            fail(&format!(
                "feature `test-keys` needs {TEST_KEY}, which does not exist"
            ));
        }
        paths.push(path);
    }

    let floor = match std::env::var("SEALROOT_SERIAL_FLOOR") {
        Ok(s) => s.trim().parse::<u64>().unwrap_or_else(|_| {
            fail(&format!(
                "SEALROOT_SERIAL_FLOOR={s:?} is not an unsigned 64-bit integer"
            ))
        }),
        Err(std::env::VarError::NotPresent) => 0,
        Err(std::env::VarError::NotUnicode(_)) => fail("SEALROOT_SERIAL_FLOOR is not valid UTF-8"),
    };
    let sealed_digest = std::env::var_os("CARGO_FEATURE_SEALED_DIGEST").is_some();
    if sealed_digest && floor > 0 {
        fail(&format!(
            "feature `sealed-digest` with SEALROOT_SERIAL_FLOOR={floor}: that policy checks no \
             seal, so a serial floor cannot be enforced; use the signed policy for rollback protection"
        ));
    }
    let text_env = |name: &str| match std::env::var(name) {
        Ok(s) => s,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(std::env::VarError::NotUnicode(_)) => fail(&format!("{name} is not valid UTF-8")),
    };
    let allow: Vec<String> = text_env("SEALROOT_CMDLINE_ALLOW")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let inits: Vec<String> = text_env("SEALROOT_INITS")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for init in &inits {
        if !init.starts_with('/') {
            fail(&format!(
                "SEALROOT_INITS entry {init:?} is not an absolute path"
            ));
        }
    }

    let tpm_pcr: u32 = match text_env("SEALROOT_TPM_PCR").trim() {
        "" => 15,
        t => match t.parse::<u32>() {
            Ok(n) if (8..=15).contains(&n) => n,
            _ => fail(&format!(
                "SEALROOT_TPM_PCR={t:?} is not a PCR in 8..=15 (0-7 are the firmware's, 16 and 23 \
                 are resettable, 17-22 need DRTM locality)"
            )),
        },
    };
    let tpm_required = match text_env("SEALROOT_TPM_REQUIRED").trim() {
        "" | "0" | "false" => false,
        "1" | "true" => true,
        t => fail(&format!(
            "SEALROOT_TPM_REQUIRED={t:?} is not one of 1, true, 0, false"
        )),
    };

    let floor_index: u32 = match text_env("SEALROOT_TPM_FLOOR_INDEX").trim() {
        "" => 0x0180_5EA1,
        "0" | "off" => 0,
        t => {
            let parsed = match t.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16).ok(),
                None => t.parse::<u32>().ok(),
            };
            match parsed {
                Some(n) if (0x0100_0000..=0x01FF_FFFF).contains(&n) => n,
                _ => fail(&format!(
                    "SEALROOT_TPM_FLOOR_INDEX={t:?} is not an NV index handle \
                     (0x01000000..=0x01ffffff) or 0/off"
                )),
            }
        }
    };
    let floor_required = match text_env("SEALROOT_REQUIRE_TPM_FLOOR").trim() {
        "" | "0" | "false" => false,
        "1" | "true" => true,
        t => fail(&format!(
            "SEALROOT_REQUIRE_TPM_FLOOR={t:?} is not one of 1, true, 0, false"
        )),
    };
    if floor_required && floor_index == 0 {
        fail("SEALROOT_REQUIRE_TPM_FLOOR=1 with SEALROOT_TPM_FLOOR_INDEX=off");
    }

    let mut keys: Vec<[u8; 32]> = Vec::new();
    for path in &paths {
        let key = read_key(path);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if sealed_digest && !keys.is_empty() {
        println!(
            "cargo:warning=feature `sealed-digest`: the {} compiled-in key(s) are ignored",
            keys.len()
        );
    }

    let mut out = String::new();
    out.push_str("// Generated by build.rs from the trusted key files. Do not edit.\n");
    let _ = writeln!(out, "pub(crate) const COMPILED_KEYS: &[[u8; 32]] = &[");
    for key in &keys {
        out.push_str("    [");
        for b in key {
            let _ = write!(out, "0x{b:02x},");
        }
        out.push_str("],\n");
    }
    out.push_str("];\n");
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_SERIAL_FLOOR: u64 = {floor};"
    );
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_SEALED_DIGEST: bool = {sealed_digest};"
    );
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_CMDLINE_ALLOW: &[&str] = &{allow:?};"
    );
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_INITS: &[&str] = &{inits:?};"
    );
    let _ = writeln!(out, "pub(crate) const COMPILED_TPM_PCR: u32 = {tpm_pcr};");
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_TPM_REQUIRED: bool = {tpm_required};"
    );
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_TPM_FLOOR_INDEX: u32 = {floor_index};"
    );
    let _ = writeln!(
        out,
        "pub(crate) const COMPILED_TPM_FLOOR_REQUIRED: bool = {floor_required};"
    );
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set")));
    let target = out_dir.join("trusted_keys.rs");
    if let Err(e) = std::fs::write(&target, out) {
        fail(&format!("writing {}: {e}", target.display()));
    }
}
