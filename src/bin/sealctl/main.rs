//! `sealctl`: build, sign, install and check sealed composefs images.
//!
//! A thin `main`: each subcommand lives in its own file beside this one, parses
//! its own flags (clap derive) and calls into the library. Errors from the
//! library are typed; they become one line here: `sealctl <cmd>: <what failed>`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod cmdline;
mod digest;
mod dump;
mod embed;
mod gc;
mod install;
mod integrity;
mod keygen;
mod mkcomposefs;
mod oci;
mod pcr;
mod pull;
mod pull_flags;
mod push_seal;
mod registry_flags;
mod sign;
mod tpm_floor;
mod uki;
mod update;
mod upgrade;
mod verify;

#[derive(Parser)]
#[command(
    name = "sealctl",
    version,
    about = "Build, sign, install and check sealed composefs root images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drop-in for mkcomposefs 1.0.x: build a composefs EROFS image.
    Mkcomposefs(mkcomposefs::Args),
    /// Print fs-verity digests, exactly as `fsverity digest` does.
    Digest(digest::Args),
    /// Print the composefs dumpfile of an image.
    Dump(dump::Args),
    /// Generate an ed25519 key pair (PKCS#8 / SubjectPublicKeyInfo PEM).
    Keygen(keygen::Args),
    /// Seal an image digest in a repository with a private key.
    Sign(sign::Args),
    /// Build a root tree into a repository (objects + image), optionally sealed.
    Build(build::Args),
    /// Check a repository offline: image, objects, seal.
    Verify(verify::Args),
    /// Install an image, its objects and seal onto a target root; enable fs-verity.
    Install(install::Args),
    /// Print the kernel command-line argument that selects an image.
    Cmdline(cmdline::Args),
    /// Inspect unified kernel images.
    #[command(subcommand)]
    Uki(uki::Command),
    /// Write trusted keys and policy into a prebuilt sealroot binary.
    EmbedKeys(embed::Args),
    /// Add composefs/meta.json to a repository an older sealctl made.
    UpgradeRepo(upgrade::Args),
    /// Remove images, seals, state and objects no kept (by default: sealed) image needs.
    Gc(gc::Args),
    /// Print the TPM record a boot of a seal extends and the PCR value it leaves.
    Pcr(pcr::Args),
    /// Provision, show and raise the TPM serial floor (an NV counter).
    TpmFloor(tpm_floor::Args),
    /// OCI images: seal the composefs image of an image's flattened root.
    #[command(subcommand)]
    Oci(oci::Command),
    /// Fetch a sealed OCI image into a repository (seal checked first, digest after).
    Pull(pull::Args),
    /// Pull, install and stage the next image as a counted trial boot entry.
    Update(update::Args),
    /// Fail when the kernel logged an fs-verity or overlayfs verity error this boot.
    IntegrityCheck(integrity::Args),
}

/// Print one error line for a failed subcommand and return failure.
pub(crate) fn fail(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("sealctl {command}: {error}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // Invoked as `mkcomposefs` (a symlink), behave as `sealctl mkcomposefs`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "mkcomposefs")
    {
        args.insert(1, "mkcomposefs".into());
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Mkcomposefs(a) => mkcomposefs::run(a),
        Command::Digest(a) => digest::run(a),
        Command::Dump(a) => dump::run(a),
        Command::Keygen(a) => keygen::run(a),
        Command::Sign(a) => sign::run(a),
        Command::Build(a) => build::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Install(a) => install::run(a),
        Command::Cmdline(a) => cmdline::run(a),
        Command::Uki(c) => uki::run(c),
        Command::EmbedKeys(a) => embed::run(a),
        Command::UpgradeRepo(a) => upgrade::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Pcr(a) => pcr::run(a),
        Command::TpmFloor(a) => tpm_floor::run(a),
        Command::Oci(c) => oci::run(c),
        Command::Pull(a) => pull::run(a),
        Command::Update(a) => update::run(a),
        Command::IntegrityCheck(a) => integrity::run(a),
    }
}
