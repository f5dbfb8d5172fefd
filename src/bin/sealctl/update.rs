//! `sealctl update --from oci:DIR[:REF]|docker://… --repo ROOT --esp ESP
//! --trusted-key PUB.pem... [--tries N] [--name NAME] [--cmdline TEXT]
//! [--kver KVER] [--floor N] [--seal FILE.json] [--no-verity]`: on a
//! running sealed machine, pull the next image into the physical root's
//! repository (the seal first, the digest after), install it there
//! (fs-verity on), and stage its boot entry with a boot counter, so the
//! next boot is a trial that falls back on failure
//! (`sealroot::oci::update`; docs/oci.md, "Updating a running machine").
//! Prints the digest; the entry, its state and the options on stderr. The
//! flags it shares with `sealctl pull` are in pull_flags.rs.

use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::oci::update::{update, Staged, UpdateOptions};

use crate::pull_flags::PullFlags;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pull: PullFlags,
    /// The mounted EFI system partition.
    #[arg(long)]
    esp: PathBuf,
    /// Tries systemd-boot gives the new entry before falling back.
    #[arg(long, default_value_t = 3)]
    tries: u32,
    /// Entry name (loader/entries/NAME+N.conf); default
    /// sealroot-<serial>-<12 hex of the digest>.
    #[arg(long)]
    name: Option<String>,
    /// Base kernel command line (no digest); default: the image's
    /// /usr/lib/kernel/cmdline.
    #[arg(long)]
    cmdline: Option<String>,
    /// The kernel version directory of /usr/lib/modules, when the image has several.
    #[arg(long)]
    kver: Option<String>,
    /// The entry's sort-key (match A's IMAGE_ID so the newer version sorts first).
    #[arg(long, default_value = "sealroot")]
    sort_key: String,
    /// Do not enable fs-verity (a root whose filesystem lacks it; the boot
    /// refuses the image until `sealctl install` enables it).
    #[arg(long)]
    no_verity: bool,
}

fn run_update(args: Args) -> Result<(), String> {
    let r = args.pull.pull_with(|source, root, pull| {
        let progress = sealroot::image::progress::Progress::new("install");
        let options = UpdateOptions {
            pull,
            esp: args.esp.clone(),
            tries: args.tries,
            name: args.name.clone(),
            cmdline: args.cmdline.clone(),
            kver: args.kver.clone(),
            sort_key: args.sort_key.clone(),
            verity: !args.no_verity,
        };
        let result = update(source, root, options, &progress);
        progress.finish();
        result.map_err(|e| e.to_string())
    })?;
    println!("{}", r.pull.digest.to_hex());
    eprintln!(
        "pulled {} (serial {}, {} layers, {} from the layer cache): {} objects added, {} already present",
        args.pull.from,
        r.pull.serial,
        r.pull.layers,
        r.pull.layers_cached,
        r.pull.objects_added,
        r.pull.objects_existing
    );
    if !r.install.verity_enabled {
        eprintln!("sealctl update: fs-verity not enabled (--no-verity): the boot refuses this image until `sealctl install` enables it");
    }
    for (from, to) in &r.boot_files {
        eprintln!("boot file {from} -> {}", to.display());
    }
    match r.staged {
        Staged::New => eprintln!(
            "staged {} ({} tries before fallback): options {}",
            r.entry.display(),
            args.tries,
            r.options
        ),
        Staged::Already(state) => eprintln!(
            "already staged: {} ({state}); nothing changed on the ESP",
            r.entry.display()
        ),
    }
    Ok(())
}

pub fn run(args: Args) -> ExitCode {
    match run_update(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail("update", e),
    }
}
