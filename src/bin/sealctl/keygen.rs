//! `sealctl keygen --output PREFIX`: a new Ed25519 key pair as
//! `PREFIX.pem` (PKCS#8, mode 0600) and `PREFIX.pub.pem` (SPKI), the same
//! files `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout` make.
//! Existing files are never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealroot::keys;

#[derive(clap::Args)]
pub struct Args {
    /// Output prefix: writes PREFIX.pem and PREFIX.pub.pem.
    #[arg(long, short)]
    output: PathBuf,
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: Args) -> ExitCode {
    let mut private = args.output.clone().into_os_string();
    private.push(".pem");
    let mut public = args.output.into_os_string();
    public.push(".pub.pem");
    let (private, public) = (PathBuf::from(private), PathBuf::from(public));
    for p in [&private, &public] {
        if p.symlink_metadata().is_ok() {
            return crate::fail(
                "keygen",
                format!("{}: already exists, not overwriting", p.display()),
            );
        }
    }
    let key = match keys::generate() {
        Ok(k) => k,
        Err(e) => return crate::fail("keygen", e),
    };
    if let Err(e) = write_new(&private, keys::private_key_pem(&key).as_bytes(), 0o600) {
        return crate::fail("keygen", e);
    }
    let vk = key.verifying_key();
    if let Err(e) = write_new(&public, keys::public_key_pem(&vk).as_bytes(), 0o644) {
        return crate::fail("keygen", e);
    }
    println!("private key {}", private.display());
    println!("public key  {}", public.display());
    println!("fingerprint {}", keys::fingerprint(&vk));
    ExitCode::SUCCESS
}
