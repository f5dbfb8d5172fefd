//! The composefs flavour of EROFS: on-disk format, writer and reader.
//!
//! - [`format`]: constants and small helpers both sides share.
//! - [`writer`]: tree → image bytes, bit-for-bit as `mkcomposefs` 1.0.x.
//! - [`reader`]: image bytes → tree, for untrusted images (never panics,
//!   bounded allocation).

pub mod format;
pub mod reader;
pub mod writer;

pub use writer::{write_image, WriteError, WriteOptions};
