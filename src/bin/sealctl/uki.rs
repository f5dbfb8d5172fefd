//! `sealctl uki inspect FILE.efi [--repo REPO [--key PUB.pem]...] [--json]`:
//! the sections of a unified kernel image, its `.cmdline`, `.osrel` and
//! `.uname`, and the digest the `.cmdline` seals (chosen by the boot side's
//! parser: first digest parameter wins). With `--repo`, also whether that
//! image is in the repository with the right content and whether its seal
//! verifies under the given keys.
//!
//! Exit status: 0 when the file is a UKI sealing a digest and every
//! requested repository check passed; 1 otherwise (the report is still
//! printed, then one `sealctl uki: ...` line says what failed).
//!
//! `sealctl uki stage FILE.efi --esp ESP [--name NAME] [--tries N]
//! [--repo REPO --key PUB.pem...]`: the update step of an A/B flow. Checks
//! that FILE is a UKI whose `.cmdline` seals a digest (and, with `--repo`,
//! that the image and its seal verify), then writes it atomically as
//! `ESP/EFI/Linux/NAME+N.efi` (systemd-boot boot counting; no counter
//! without `--tries`). See docs/uki.md, "A/B updates and automatic fallback".
//!
//! `sealctl uki entries --esp ESP [--json]`: the Type #2 entries on an ESP
//! (`EFI/Linux/*.efi`), then the Type #1 ones (`loader/entries/*.conf`, as
//! `sealctl update` stages them), and what their counters say (good, trying
//! with N left, bad).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::image::bootcount;
use sealroot::image::repo::{self, Repo};
use sealroot::image::uki::{self, UkiInfo};
use sealroot::seal;

/// Largest UKI read into memory.
const MAX_UKI: u64 = 1 << 30;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a UKI's sections and the digest its .cmdline seals.
    Inspect(InspectArgs),
    /// Place a sealed UKI on an ESP as a Type #2 entry, with boot counting.
    Stage(StageArgs),
    /// List the Type #2 and Type #1 entries on an ESP and their boot-counting state.
    Entries(EntriesArgs),
}

#[derive(clap::Args)]
pub struct StageArgs {
    /// The UKI (PE) file; its .cmdline must seal a digest.
    file: PathBuf,
    /// The mounted EFI system partition (the entry goes to ESP/EFI/Linux/).
    #[arg(long)]
    esp: PathBuf,
    /// Entry name without counter and .efi (default: FILE's name without them).
    #[arg(long)]
    name: Option<String>,
    /// Boot tries before systemd-boot gives up on the entry (name+N.efi);
    /// without it the entry is staged as already good.
    #[arg(long)]
    tries: Option<u32>,
    /// Repository root (holds composefs/): the sealed image must be there and verify.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Public key (PEM) the seal must verify under; repeatable. Needs --repo.
    #[arg(long = "key", value_name = "PUB.pem", requires = "repo")]
    keys: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct EntriesArgs {
    /// The mounted EFI system partition.
    #[arg(long)]
    esp: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The UKI (PE) file.
    file: PathBuf,
    /// Repository root (holds composefs/): check the sealed image and its seal.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Public key (PEM) to verify the seal with; repeatable. Needs --repo.
    #[arg(long = "key", value_name = "PUB.pem", requires = "repo")]
    keys: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Inspect(args) => inspect(args),
        Command::Stage(args) => stage(args),
        Command::Entries(args) => entries(args),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    sealroot::image::fileio::read_bounded(path, MAX_UKI).map_err(|e| e.to_string())
}

/// Result of the repository checks, each `Ok(description)` or `Err(reason)`.
struct RepoReport {
    image: Result<String, String>,
    seal: Result<String, String>,
}

fn check_repo(root: &Path, keys: &[PathBuf], digest: &sealroot::digest::Digest) -> RepoReport {
    let repo = Repo::new(root);
    let image = repo::read_checked_image(&repo, digest)
        .map(|_| {
            format!(
                "{} present, fs-verity digest matches",
                repo.image_path(digest).display()
            )
        })
        .map_err(|e| e.to_string());
    let seal = (|| {
        // The boot's own reader and check, from the same beneath-fd opens.
        let dir = sealroot::boot::mount::open_repo(root).map_err(|e| e.to_string())?;
        let (manifest, _) = seal::read_seal_pair(&dir, digest).map_err(|e| format!("seal: {e}"))?;
        if keys.is_empty() {
            let m = seal::Manifest::parse(&manifest).map_err(|e| e.to_string())?;
            return Ok(format!(
                "present, names key {} serial {}; not verified (no --key given)",
                m.key, m.serial
            ));
        }
        let mut trusted = Vec::with_capacity(keys.len());
        for path in keys {
            trusted.push(
                sealroot::keys::load_public_key(path)
                    .map_err(|e| format!("key {}: {e}", path.display()))?,
            );
        }
        let verified = seal::check_repository_seal(&dir, digest, &trusted, 0)
            .map_err(|e| e.to_string())?
            .verified;
        Ok(format!(
            "verified by {} (serial {})",
            verified.key_fingerprint, verified.manifest.serial
        ))
    })();
    RepoReport { image, seal }
}

fn osrel_summary(osrel: &str) -> String {
    let fields = uki::os_release_fields(osrel);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let name = get("PRETTY_NAME").or(get("NAME")).unwrap_or("(unnamed)");
    let mut extra = Vec::new();
    for k in ["ID", "VERSION_ID", "IMAGE_ID", "IMAGE_VERSION"] {
        if let Some(v) = get(k) {
            extra.push(format!("{k}={v}"));
        }
    }
    if extra.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", extra.join(", "))
    }
}

fn text_report(
    path: &Path,
    size: usize,
    info: &UkiInfo,
    sealed: &Result<uki::SealedDigest, uki::CmdlineDigestError>,
    repo: Option<&RepoReport>,
) -> String {
    let mut out = format!(
        "file: {} ({size} bytes, {}, machine {:#06x})\n",
        path.display(),
        if info.pe32_plus { "PE32+" } else { "PE32" },
        info.machine
    );
    out.push_str(&format!(
        "sections:\n  {:<10} {:>10} {:>10} {:>10} {:>10}\n",
        "name", "vsize", "vaddr", "offset", "rawsize"
    ));
    for s in &info.sections {
        out.push_str(&format!(
            "  {:<10} {:>10} {:>#10x} {:>#10x} {:>10}\n",
            s.name, s.virtual_size, s.virtual_address, s.raw_offset, s.raw_size
        ));
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    out.push_str(&format!("cmdline: {}\n", show(&info.cmdline)));
    out.push_str(&format!(
        "osrel: {}\n",
        info.osrel
            .as_deref()
            .map(osrel_summary)
            .unwrap_or_else(|| "(absent)".into())
    ));
    out.push_str(&format!("uname: {}\n", show(&info.uname)));
    match sealed {
        Ok(s) => {
            out.push_str(&format!("sealed digest: {}\n", s.digest.to_composefs()));
            for i in &s.ignored {
                out.push_str(&format!("ignored later digest parameter: {i}\n"));
            }
        }
        Err(e) => out.push_str(&format!("sealed digest: none ({e})\n")),
    }
    if let Some(r) = repo {
        let line = |r: &Result<String, String>| match r {
            Ok(s) => format!("ok: {s}"),
            Err(e) => format!("FAILED: {e}"),
        };
        out.push_str(&format!("repo image: {}\n", line(&r.image)));
        out.push_str(&format!("repo seal: {}\n", line(&r.seal)));
    }
    out
}

fn json_report(
    path: &Path,
    size: usize,
    info: &UkiInfo,
    sealed: &Result<uki::SealedDigest, uki::CmdlineDigestError>,
    repo: Option<&RepoReport>,
) -> serde_json::Value {
    let check = |r: &Result<String, String>| match r {
        Ok(s) => serde_json::json!({"ok": true, "detail": s}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    let osrel: serde_json::Map<String, serde_json::Value> = info
        .osrel
        .as_deref()
        .map(uki::os_release_fields)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    serde_json::json!({
        "file": path.display().to_string(),
        "size": size,
        "pe32_plus": info.pe32_plus,
        "machine": info.machine,
        "is_uki": info.has_linux,
        "sections": info.sections,
        "cmdline": info.cmdline,
        "osrel": if info.osrel.is_some() { serde_json::Value::Object(osrel) } else { serde_json::Value::Null },
        "uname": info.uname,
        "digest": match sealed {
            Ok(s) => serde_json::json!({
                "algorithm": s.digest.algorithm().name(),
                "hex": s.digest.to_hex(),
                "composefs": s.digest.to_composefs(),
                "parameter": s.parameter,
            }),
            Err(_) => serde_json::Value::Null,
        },
        "digest_error": sealed.as_ref().err().map(|e| e.to_string()),
        "ignored_digests": sealed.as_ref().map(|s| s.ignored.clone()).unwrap_or_default(),
        "repo": repo.map(|r| serde_json::json!({"image": check(&r.image), "seal": check(&r.seal)})),
    })
}

fn inspect(args: InspectArgs) -> ExitCode {
    let data = match read_file(&args.file) {
        Ok(d) => d,
        Err(e) => return crate::fail("uki", e),
    };
    let info = match uki::inspect(&data) {
        Ok(i) => i,
        Err(e) => return crate::fail("uki", format!("{}: {e}", args.file.display())),
    };
    let sealed = match &info.cmdline {
        Some(c) => uki::sealed_digest(c),
        None => Err(uki::CmdlineDigestError::NoDigest),
    };
    let repo = match (&args.repo, &sealed) {
        (Some(root), Ok(s)) => Some(check_repo(root, &args.keys, &s.digest)),
        _ => None,
    };
    if args.json {
        let v = json_report(&args.file, data.len(), &info, &sealed, repo.as_ref());
        let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "null".into());
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    } else {
        let text = text_report(&args.file, data.len(), &info, &sealed, repo.as_ref());
        let _ = write!(std::io::stdout().lock(), "{text}");
    }
    if !info.has_linux {
        return crate::fail(
            "uki",
            format!("{}: no .linux section, not a UKI", args.file.display()),
        );
    }
    if info.cmdline.is_none() {
        return crate::fail(
            "uki",
            format!("{}: no .cmdline section", args.file.display()),
        );
    }
    if let Err(e) = &sealed {
        return crate::fail("uki", e);
    }
    if let Some(r) = &repo {
        if let Err(e) = &r.image {
            return crate::fail("uki", format!("image: {e}"));
        }
        if let Err(e) = &r.seal {
            return crate::fail("uki", format!("seal: {e}"));
        }
    }
    ExitCode::SUCCESS
}

fn stage(args: StageArgs) -> ExitCode {
    let data = match read_file(&args.file) {
        Ok(d) => d,
        Err(e) => return crate::fail("uki stage", e),
    };
    let info = match uki::inspect(&data) {
        Ok(i) => i,
        Err(e) => return crate::fail("uki stage", format!("{}: {e}", args.file.display())),
    };
    if !info.has_linux {
        return crate::fail(
            "uki stage",
            format!("{}: no .linux section, not a UKI", args.file.display()),
        );
    }
    let sealed = match info.cmdline.as_deref().map(uki::sealed_digest) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return crate::fail("uki stage", format!("{}: {e}", args.file.display())),
        None => {
            return crate::fail(
                "uki stage",
                format!("{}: no .cmdline section", args.file.display()),
            )
        }
    };
    if let Some(root) = &args.repo {
        let r = check_repo(root, &args.keys, &sealed.digest);
        if let Err(e) = r.image {
            return crate::fail("uki stage", format!("image: {e}"));
        }
        match r.seal {
            Err(e) => return crate::fail("uki stage", format!("seal: {e}")),
            Ok(s) => println!("seal: {s}"),
        }
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            let file = args
                .file
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            match bootcount::EntryName::parse(file) {
                Some(n) => n.stem,
                None => {
                    return crate::fail(
                        "uki stage",
                        format!("{}: not named *.efi; give --name", args.file.display()),
                    )
                }
            }
        }
    };
    match bootcount::stage(&args.esp, &name, args.tries, &data) {
        Ok(path) => {
            println!(
                "staged {} ({}, {})",
                path.display(),
                sealed.digest.to_composefs(),
                match args.tries {
                    Some(n) => format!("{n} tries before fallback"),
                    None => "no boot counting".to_string(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail("uki stage", e),
    }
}

fn entries(args: EntriesArgs) -> ExitCode {
    let list = match bootcount::entries(&args.esp).and_then(|t2| {
        let t1 = bootcount::type1_entries(&args.esp)?;
        Ok(t2
            .into_iter()
            .map(|(n, p)| (n.id(), 2, n, p))
            .chain(t1.into_iter().map(|(n, p)| (n.type1_id(), 1, n, p)))
            .collect::<Vec<_>>())
    }) {
        Ok(l) => l,
        Err(e) => return crate::fail("uki entries", e),
    };
    let mut out = String::new();
    if args.json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|(id, kind, n, p)| {
                serde_json::json!({
                    "id": id,
                    "type": kind,
                    "file": p.display().to_string(),
                    "state": n.state().to_string(),
                    "tries_left": n.left,
                    "tries_done": n.done,
                })
            })
            .collect();
        out = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into());
        out.push('\n');
    } else {
        for (id, _, n, p) in &list {
            let state = match (n.state(), n.left, n.done) {
                (bootcount::EntryState::Trying, Some(l), d) => {
                    format!("trying ({l} left, {} done)", d.unwrap_or(0))
                }
                (s, _, _) => s.to_string(),
            };
            out.push_str(&format!("{id:<40} {state:<24} {}\n", p.display()));
        }
    }
    let _ = write!(std::io::stdout().lock(), "{out}");
    ExitCode::SUCCESS
}
