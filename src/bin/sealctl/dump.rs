//! `sealctl dump IMAGE`: print the composefs dumpfile of an image.
//!
//! The image is untrusted: it is read by `sealroot::image::erofs::reader`, which
//! bounds-checks everything, and any malformed image is one error line and a
//! non-zero exit. Output goes through a buffer and is flushed before success
//! is reported, so a failed write (a closed pipe, a full disk) is an error too.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use sealroot::image::erofs::reader::read_image;

#[derive(clap::Args)]
pub struct Args {
    /// The composefs EROFS image to print.
    pub image: PathBuf,
}

pub fn run(args: Args) -> ExitCode {
    let bytes = match std::fs::read(&args.image) {
        Ok(b) => b,
        Err(e) => return crate::fail("dump", format!("{}: {e}", args.image.display())),
    };
    let tree = match read_image(&bytes) {
        Ok(t) => t,
        Err(e) => return crate::fail("dump", format!("{}: {e}", args.image.display())),
    };
    drop(bytes);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Err(e) = sealroot::image::dumpfile::write(&tree, &mut out).and_then(|()| out.flush()) {
        return crate::fail("dump", format!("writing the dumpfile: {e}"));
    }
    ExitCode::SUCCESS
}
