//! Terminal progress for long operations (build, verify, install).
//!
//! Contract:
//! - One updating line on stderr, drawn only when stderr is a terminal
//!   (`indicatif` decides: no tty, or `TERM=dumb`, means hidden), at most 10
//!   times a second however often it is updated, and not before one
//!   interval has passed, so short operations stay quiet. Silent otherwise,
//!   so logs and pipes never see control characters.
//! - [`Progress`] is `Sync`: worker threads call [`Progress::add`] through a
//!   shared reference. The file count is `indicatif`'s position (an atomic,
//!   with its own lock-free gate before a redraw is attempted); the byte
//!   counts are atomics here, read by the line's formatter.
//! - [`Progress::finish`] (and dropping the reporter) erases the line,
//!   leaving the terminal as it was.
//!
//! `indicatif` does the terminal work (tty detection, rate limit, erasing);
//! this module keeps the line's text ([`Progress::line`]) and the quiet
//! first interval.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

const INTERVAL: Duration = Duration::from_millis(100);
/// Redraws per second at most.
const HZ: u8 = 10;

/// Byte counts, shared with the line's formatter.
#[derive(Default)]
struct Bytes {
    done: AtomicU64,
    total: AtomicU64,
}

pub struct Progress {
    label: String,
    bar: ProgressBar,
    bytes: Arc<Bytes>,
    /// Where to draw once the first interval has passed; `None` never draws.
    target: Option<fn() -> ProgressDrawTarget>,
    shown: AtomicBool,
    start: Instant,
}

fn stderr_target() -> ProgressDrawTarget {
    ProgressDrawTarget::stderr_with_hz(HZ)
}

/// The text of the line: `label: files[/total] files, MiB[/total] MiB, rate`.
fn render(
    label: &str,
    files: u64,
    total_files: Option<u64>,
    bytes: &Bytes,
    elapsed: Duration,
) -> String {
    let done = bytes.done.load(Ordering::Relaxed);
    let total = bytes.total.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = format!("{label}: {files}");
    if let Some(tf) = total_files.filter(|&t| t > 0) {
        let _ = write!(s, "/{tf}");
    }
    let _ = write!(s, " files, {:.1}", mib(done));
    if total > 0 {
        let _ = write!(s, "/{:.1}", mib(total));
    }
    let _ = write!(s, " MiB, {:.1} MiB/s", mib(done) / secs);
    s
}

impl Progress {
    /// A reporter labelled `label`, drawing only if stderr is a terminal.
    pub fn new(label: &str) -> Progress {
        let tty = !ProgressDrawTarget::stderr().is_hidden();
        Self::with_target(label, tty.then_some(stderr_target as fn() -> _))
    }

    /// A reporter that never draws.
    pub fn hidden() -> Progress {
        Self::with_target("", None)
    }

    fn with_target(label: &str, target: Option<fn() -> ProgressDrawTarget>) -> Progress {
        let bytes = Arc::<Bytes>::default();
        let shared = Arc::clone(&bytes);
        let name = label.to_owned();
        let style = ProgressStyle::with_template("{line}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "line",
                move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let text = render(&name, state.pos(), state.len(), &shared, state.elapsed());
                    let _ = w.write_str(&text);
                },
            );
        // Hidden until the first interval has passed.
        let bar =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_style(style);
        Progress {
            label: label.to_owned(),
            bar,
            bytes,
            target,
            shown: AtomicBool::new(false),
            start: Instant::now(),
        }
    }

    /// Whether this reporter draws anything.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Known totals (0 = unknown), shown as "done/total".
    pub fn set_total(&self, files: u64, bytes: u64) {
        if files > 0 {
            self.bar.set_length(files);
        } else {
            self.bar.unset_length();
        }
        self.bytes.total.store(bytes, Ordering::Relaxed);
    }

    /// Count `files` more files and `bytes` more bytes done.
    pub fn add(&self, files: u64, bytes: u64) {
        self.bytes.done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(target) = self.target {
            if !self.shown.load(Ordering::Relaxed)
                && self.start.elapsed() >= INTERVAL
                && !self.shown.swap(true, Ordering::Relaxed)
            {
                self.bar.set_draw_target(target());
            }
        }
        self.bar.inc(files);
    }

    /// (files, bytes) counted so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.bar.position(), self.bytes.done.load(Ordering::Relaxed))
    }

    /// The text of the progress line at `now` (without control characters).
    pub fn line(&self, now: Instant) -> String {
        render(
            &self.label,
            self.bar.position(),
            self.bar.length(),
            &self.bytes,
            now.duration_since(self.start),
        )
    }

    /// Erase the line if anything was drawn.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use std::sync::{Mutex, OnceLock};

    #[test]
    fn counts_and_line() {
        let p = Progress::hidden();
        assert!(!p.is_enabled());
        p.set_total(10, 4 << 20);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        p.add(1, 1024);
                    }
                });
            }
        });
        assert_eq!(p.counts(), (1000, 1024 * 1000));
        let line = p.line(p.start + Duration::from_secs(2));
        assert!(
            line.starts_with(": 1000/10 files, 1.0/4.0 MiB, 0.5 MiB/s"),
            "{line}"
        );
        p.set_total(0, 0);
        let line = p.line(p.start + Duration::from_secs(1));
        assert_eq!(line, ": 1000 files, 1.0 MiB, 1.0 MiB/s");
    }

    /// A one-line terminal in memory: what is on the line, and how many
    /// writes reached it.
    #[derive(Debug, Default)]
    struct Screen {
        line: Mutex<(String, usize)>,
    }

    impl Screen {
        fn edit(&self, f: impl FnOnce(&mut String)) -> std::io::Result<()> {
            let mut g = self.line.lock().unwrap();
            f(&mut g.0);
            g.1 += 1;
            Ok(())
        }
        fn contents(&self) -> (String, usize) {
            self.line.lock().unwrap().clone()
        }
    }

    #[derive(Debug)]
    struct Shared(&'static Screen);

    impl TermLike for Shared {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            // A carriage return starts the line over.
            self.0.edit(|l| match s.rsplit_once('\r') {
                Some((_, rest)) => *l = rest.to_owned(),
                None => l.push_str(s),
            })
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.0.edit(String::clear)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn screen() -> &'static Screen {
        static SCREEN: OnceLock<Screen> = OnceLock::new();
        SCREEN.get_or_init(Screen::default)
    }

    fn screen_target() -> ProgressDrawTarget {
        ProgressDrawTarget::term_like_with_hz(Box::new(Shared(screen())), HZ)
    }

    #[test]
    fn quiet_first_interval_then_one_line_then_erased() {
        let mut p = Progress::with_target("install", Some(screen_target));
        assert!(p.is_enabled());
        p.set_total(3, 0);
        // The clock is set, not waited for: a test thread descheduled for
        // an interval (a loaded machine) must not see the line early.
        p.start = Instant::now() + Duration::from_secs(3600);
        p.add(1, 1 << 20);
        p.bar.tick();
        assert_eq!(screen().contents(), (String::new(), 0), "drawn too early");
        p.start = Instant::now()
            .checked_sub(INTERVAL + Duration::from_millis(20))
            .unwrap();
        p.add(1, 1 << 20);
        p.bar.tick();
        let (shown, writes) = screen().contents();
        assert!(writes > 0);
        assert!(
            shown.starts_with("install: 2/3 files, 2.0 MiB, "),
            "{shown:?}"
        );
        assert!(!shown.contains('\n'), "{shown:?}");
        drop(p);
        assert_eq!(screen().contents().0, "", "line not erased");
    }
}
