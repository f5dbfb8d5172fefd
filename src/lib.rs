//! sealroot: boot only the root filesystem the vendor sealed.
//!
//! The tree shows the architecture: what the boot binary runs, what only the
//! tool runs, and the few things both need.
//!
//! | module | concern |
//! |---|---|
//! | **shared** | |
//! | [`digest`] | the digest value type and the one user digest grammar |
//! | [`keys`] | ed25519 keys: fingerprints, embedded keys; PEM files (tool) |
//! | [`seal`] | seal manifest format, strict verification, the one seal check |
//! | [`layout`] | every relative name in a repository and its state directory |
//! | [`repo_meta`] | `composefs/meta.json` (composefs-rs format metadata) |
//! | [`tpm`] | TPM2 PCR_Event measurement, the records, systemd's measurement log |
//! | [`sys`] | the only `unsafe`: ioctls and raw syscalls rustix lacks |
//! | **boot** ([`boot`]) | orchestration and `/run/sealroot/status.json` |
//! | [`boot::cmdline`] | kernel command line parsing, digest parameter selection |
//! | [`boot::policy`] | command-line allowlist, init list, init argv/environment |
//! | [`boot::config`] | the initramfs config file (`/etc/sealroot/config.json`) |
//! | [`boot::trust`] | the trust anchor: compiled-in / embedded keys and policy |
//! | [`boot::io`] | the boot binary's file I/O: bounded reads, beneath-opens, errno names |
//! | [`boot::mount`] | measured EROFS fd, overlay `verity=require`, state dirs |
//! | [`boot::switchroot`] | API filesystems, modules, freeing the initramfs, exec |
//! | [`boot::log`] | the kmsg logger (`<N>sealroot: message`) |
//! | **image** (`image`, feature `tool`) | |
//! | `image::tree` | the in-memory filesystem tree images are built from |
//! | `image::scan` | reading a directory tree from disk into a tree |
//! | `image::dumpfile` | composefs dumpfile text format: parse and print |
//! | `image::fsverity` | userspace fs-verity file digests (Merkle tree) |
//! | `image::digest_cache` | incremental builds: digests of unchanged files reused (`--digest-cache`) |
//! | `image::store` | the crash-safe fs-verity object store |
//! | `image::erofs` | composefs EROFS image format: writer and reader |
//! | `image::repo` | repository build, offline verify, install |
//! | `image::gc` | repository garbage collection (`sealctl gc`), crash-safe removal order |
//! | `image::fileio` | the tool's one bounded read and one atomic write |
//! | `image::bootcount` | systemd-boot boot counting names (`name+N-M.efi`) and staging a UKI |
//! | `image::uki` | UKI sections and the digest they seal (PE read by `object`) |
//! | `image::progress` | the progress line of long operations (drawn by `indicatif`) |
//! | **oci** (`oci`, feature `tool`) | OCI images and registries: flatten layers, seal, push, pull |
//!
//! The `image` side exists only with the `tool` feature; the boot binary is
//! built with `--no-default-features`, so the compiler (not a table) keeps
//! tool code out of it. `unsafe` code lives only in [`sys`]; everything else
//! is checked by `#![deny(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod boot;
pub mod digest;
#[cfg(feature = "tool")]
pub mod image;
pub mod keys;
pub mod layout;
#[cfg(feature = "tool")]
pub mod oci;
pub mod repo_meta;
pub mod seal;
#[allow(unsafe_code)]
pub mod sys;
pub mod tpm;
