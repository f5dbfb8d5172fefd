//! The composefs dumpfile text format (composefs-dump(5)): parse and print.
//!
//! (Parser and printer being written; signatures are final.)

use std::io::{self, Write};

use crate::tree::Tree;

/// Why a dumpfile was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpfileError {
    /// Placeholder until the parser lands.
    Unsupported,
}

impl std::fmt::Display for DumpfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DumpfileError::Unsupported => write!(f, "dumpfile parsing is not implemented yet"),
        }
    }
}

impl std::error::Error for DumpfileError {}

/// Parse a dumpfile into a tree. `strict` refuses inputs the reference
/// parser only tolerates (for instance a symlink SIZE that disagrees with
/// its target).
pub fn parse(_input: &[u8], _strict: bool) -> Result<Tree, DumpfileError> {
    Err(DumpfileError::Unsupported)
}

/// Print `tree` as a dumpfile.
pub fn write(_tree: &Tree, _out: &mut impl Write) -> io::Result<()> {
    Ok(())
}
