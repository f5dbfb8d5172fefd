//! The registry flags every registry-reading subcommand flattens in:
//! trust (`--ca-file`), plain HTTP exceptions (`--insecure-registry`),
//! credentials (`--authfile`) and `--retries`. They become a
//! [`RegistryOptions`]; the rules behind them are in `sealroot::oci::registry`.

use std::path::PathBuf;

use sealroot::oci::registry::{RegistryOptions, DEFAULT_RETRIES};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryFlags {
    /// PEM file of CA certificates trusted beside the system bundle (repeatable).
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_files: Vec<PathBuf>,
    /// Speak plain HTTP to this registry, written as in the reference (HOST:PORT; repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
    /// Auth file searched first, instead of $REGISTRY_AUTH_FILE
    /// (then ${XDG_RUNTIME_DIR}/containers/auth.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Retries after a connection error, timeout, 429 or 5xx (backoff doubles from 250 ms).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RETRIES)]
    pub retries: u32,
}

impl RegistryFlags {
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            ca_files: self.ca_files.clone(),
            insecure: self.insecure.clone(),
            auth_file: self.authfile.clone(),
            retries: self.retries,
            ..RegistryOptions::default()
        }
    }
}
