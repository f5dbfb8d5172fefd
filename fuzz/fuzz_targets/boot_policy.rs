//! The boot policy's command-line check: every word of an attacker's boot
//! entry goes through it under the signed trust policy. Besides "never
//! panics", checks the property the boot relies on: a line the default
//! policy accepts hands init nothing (no `--`, no `init=` off the list, no
//! word outside the allowlist), whatever quoting or spacing it uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealroot::boot::policy::{BootPolicy, DEFAULT_INITS};
use sealroot::boot::cmdline;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: vendor entries (may be invalid: must be refused, not panic).
    let (entries, line) = text.split_once('\n').unwrap_or(("", text));
    let extra: Vec<String> = entries.split_whitespace().map(str::to_string).collect();
    let _ = BootPolicy::new(extra, None);

    let policy = BootPolicy::default();
    if policy.check(line).is_ok() {
        for w in cmdline::words(line) {
            assert!(policy.allows(w.key, w.value), "accepted word {w:?}");
            assert_ne!(w.key, "--", "accepted a line handing arguments to init");
            if w.key == "init" {
                assert!(
                    w.value.is_some_and(|v| DEFAULT_INITS.contains(&v)),
                    "accepted init={:?}",
                    w.value
                );
            }
        }
        // What the boot then parses never names an init off the list.
        if let Ok(c) = cmdline::parse(line) {
            assert!(policy.choose_init(c.init.as_deref()).is_ok());
        }
    }
});
