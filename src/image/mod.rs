//! The image and repository side: everything `sealctl` needs to turn a
//! directory into a sealed, installable repository, and nothing the boot
//! binary runs. Compiled only with the `tool` feature, so the boot binary
//! (built with `--no-default-features`) cannot name any of it.
//!
//! Data flows top to bottom: [`scan`] reads a directory into a [`tree`]
//! (or [`dumpfile`] parses one), [`fsverity`] digests file contents,
//! [`digest_cache`] lets a rebuild reuse digests of unchanged files,
//! [`store`] writes them as objects, [`erofs`] writes (and reads back) the
//! image, [`repo`] publishes, verifies and installs whole repositories,
//! [`gc`] removes what no kept image of a repository needs, and
//! [`uki`] reads the digest back out of a unified kernel image.

pub mod bootcount;
pub mod digest_cache;
pub mod dumpfile;
pub mod erofs;
pub mod fileio;
pub mod fsverity;
pub mod gc;
pub mod progress;
pub mod repo;
pub mod scan;
pub mod store;
pub mod tree;
pub mod uki;
