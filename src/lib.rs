//! sealroot: boot only the root filesystem the vendor sealed.
//!
//! The library holds everything both binaries share. One module per concern:
//!
//! | module        | concern                                                         | used by |
//! |---------------|-----------------------------------------------------------------|---------|
//! | [`digest`]    | the digest value type (`v1-sha256-12:<hex>` grammar, hex)       | both    |
//! | [`fsverity`]  | userspace fs-verity file digests (Merkle tree, descriptor)      | both    |
//! | [`sys`]       | the only `unsafe`: ioctls and raw syscalls rustix lacks         | both    |
//! | [`cmdline`]   | kernel command line parsing, digest parameter selection         | boot    |
//! | [`config`]    | the initramfs config file (`/etc/sealroot/config.json`)         | boot    |
//! | [`keys`]      | ed25519 PEM keys (PKCS#8 / SPKI), fingerprints, embedded keys   | both    |
//! | [`trust`]     | the trust anchor: compiled-in / embedded keys and policy        | boot    |
//! | [`seal`]      | seal manifest format, signing and strict verification           | both    |
//! | [`erofs`]     | composefs EROFS image format: writer and reader                 | tool    |
//! | [`tree`]      | the in-memory filesystem tree images are built from             | tool    |
//! | [`dumpfile`]  | composefs dumpfile text format: parse and print                 | tool    |
//! | [`scan`]      | reading a directory tree from disk into a [`tree`]              | tool    |
//! | [`store`]     | the crash-safe fs-verity object store (`objects/XX/<rest>`)     | tool    |
//! | [`repo`]      | repository layout, build, offline verify, install               | tool    |
//! | [`repo_meta`] | `composefs/meta.json` (composefs-rs format metadata)            | both    |
//! | [`uki`]       | PE/UKI section parsing                                          | tool    |
//! | [`mount`]     | the mount sequence: measured EROFS fd, overlay `verity=require` | boot    |
//! | [`switchroot`]| moving API filesystems, freeing the initramfs, chroot + exec    | boot    |
//! | [`log`]       | the kmsg logger (`<N>sealroot: message`)                        | boot    |
//! | [`boot`]      | the boot orchestration and `/run/sealroot/status.json`          | boot    |
//! | [`boot_policy`] | command-line allowlist, init list, init argv/environment      | boot    |
//! | [`progress`]  | terminal progress lines for long operations                     | tool    |
//! | [`tpm`]       | TPM2 PCR_Event measurement, records, systemd measurement log     | both    |
//!
//! `unsafe` code lives only in [`sys`]; everything else is checked by
//! `#![deny(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod boot;
pub mod boot_policy;
pub mod cmdline;
pub mod config;
pub mod digest;
pub mod dumpfile;
pub mod erofs;
pub mod fsverity;
pub mod keys;
pub mod log;
pub mod mount;
pub mod progress;
pub mod repo;
pub mod repo_meta;
pub mod scan;
pub mod seal;
pub mod store;
pub mod switchroot;
#[allow(unsafe_code)]
pub mod sys;
pub mod tpm;
pub mod tree;
pub mod trust;
pub mod uki;
