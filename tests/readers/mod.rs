//! Models of the other programs that read the kernel command line, for the
//! differential checks in `tests/cmdline_readers.rs` and the
//! `cmdline_readers` fuzz target (which includes this file by path).
//!
//! sealroot checks the words of the line (`sealroot::boot::cmdline::words`)
//! against its boot policy, but the same bytes are split into words again by
//! the kernel, by x86 early boot code, by systemd and by dracut. A policy on
//! words only holds if, for every line it accepts, every one of those readers
//! gets exactly sealroot's words. Each model here turns a line into the words
//! one reader sees, written from the reader's source (named with each model;
//! no code copied) and, where this machine can run the reader, checked
//! against it by the tests named below.
//!
//! Common contract:
//! - Input: the kernel's command line as bytes, the string the boot loader
//!   passed and the kernel keeps: no NUL, at most [`COMMAND_LINE_SIZE`] - 1
//!   bytes. [`boot_line`] makes one from arbitrary bytes. Readers of
//!   `/proc/cmdline` see [`proc_cmdline`] of it (the kernel's
//!   `fs/proc/cmdline.c` prints the line and one `\n`).
//! - Output: `Some(words)`, each a [`Word`] (key before the first `=` as the
//!   reader defines it, value after it or none); or `None` where the words do
//!   not follow from the line alone (a file system glob, an out-of-bounds
//!   read). `None` never equals sealroot's words: a line that any reader
//!   reads as `None` must be refused by the policy.
//! - sealroot's side ([`sealroot_line`], [`sealroot_words`]) is what
//!   `src/boot/mod.rs` does: read `/proc/cmdline`, drop the one newline the
//!   kernel appended, check the raw bytes with `BootPolicy::check_bytes`,
//!   then split `String::from_utf8_lossy` of them with `cmdline::words`.
//!
//! The models ([`READERS`]):
//! - `kernel` ([`kernel`]): `parse_args` in `kernel/params.c` skips spaces,
//!   then calls `next_arg` (`lib/cmdline.c`) until the string ends. The
//!   kernel's own ctype table (`lib/ctype.c`) makes `isspace` true for
//!   0x09..=0x0D, 0x20 and 0xA0 (Latin-1 no-break space). `next_arg`: a word
//!   that starts with `"` drops that quote and starts "in quotes"; every `"`
//!   toggles in-quotes; unquoted space ends the word. The first `=` at an
//!   index above 0 of the (quote-stripped) word splits key and value (an `=`
//!   at index 0 is not seen, because 0 means "none" there). A value
//!   starting with `"` drops it, and then the word's last byte is dropped if
//!   it is `"`; a word that started with `"` drops its last byte if it is
//!   `"` (both writes are NUL stores into the word, done after the `=`
//!   store, and key and value end at the first NUL). No escapes. A lone `"`
//!   ending the line reads `args[i-1]` with the unsigned `i == 0`, 4 GiB past
//!   the word: `None`. The words after `--` go to init through the same
//!   `next_arg` (`init/main.c`), so the model does not stop there. Checked
//!   against the source (`lib/cmdline.c` `next_arg`, `lib/ctype.c`
//!   `_ctype`, `kernel/params.c` `parse_args`); the real kernel is booted
//!   by the QEMU suites, not here. dracut's `dracut-util` carries a copy of
//!   the same function, which the dracut test runs for real (and which
//!   segfaults on the lone trailing `"`).
//! - `x86` ([`x86`]): `cmdline_find_option_bool` and `cmdline_find_option`
//!   (`arch/x86/lib/cmdline.c`, used before the generic parser runs, e.g. by
//!   the decompressor's `nokaslr` and by `nopti`, `clearcpuid=`): `myisspace`
//!   is `c <= ' '`, no quotes, NUL ends the string, at most
//!   `COMMAND_LINE_SIZE` bytes are looked at; an option matches a whole
//!   word, `option=` copies the value up to the next separator. As a word
//!   splitter: maximal runs of bytes above 0x20, split at the first `=`.
//!   (The lookups read up to 2048 bytes of the boot loader's buffer, one
//!   more than the 2047 the kernel keeps; a word starting at that last byte
//!   is one byte long, shorter than any x86 option.) Checked against the
//!   source (the state machines of both functions,
//!   current form where a mismatch falls through to `st_wordskip` on the
//!   same byte; older kernels could skip the next word after a near miss,
//!   which only makes them see fewer words).
//! - `systemd` ([`systemd`], [`systemd_split`]): `proc_cmdline_parse`
//!   (`src/basic/proc-cmdline.c`, systemd 252 to 254) reads `/proc/cmdline`
//!   with `read_one_line_file`, which stops at the first `\n`, `\r` or NUL
//!   (`read_line_full`, `src/basic/fileio.c`), then `strv_split_full` with
//!   `EXTRACT_UNQUOTE|EXTRACT_RELAX|EXTRACT_RETAIN_ESCAPE` on the default
//!   separators `" \t\n\r"` (`extract_first_word`, `src/basic/extract-word.c`):
//!   `'` or `"` anywhere opens a quote that runs to the same quote byte (both
//!   removed; inside, separators and the other quote are plain bytes), an
//!   unclosed quote runs to the end (RELAX), a backslash is a plain byte
//!   (RETAIN_ESCAPE: no escapes at all, so `a\ b` is two words), and a word
//!   is returned once any non-separator byte was seen (so `''` is an empty
//!   word). Key and value split at the first `=`
//!   (`proc_cmdline_parse_strv`). Not modelled (they filter or rename words,
//!   never split them): `rd.` words dropped outside the initrd or stripped
//!   inside, `-`/`_` equivalence in key comparison, the `SystemdOptions` EFI
//!   variable parsed before the line. Checked against the real systemd
//!   (`systemd_model_matches_the_real_debug_generator`): the installed
//!   `systemd-debug-generator` runs with `SYSTEMD_PROC_CMDLINE=<line>`
//!   (which replaces the `/proc/cmdline` read, so that test compares
//!   [`systemd_split`]; in a container systemd would read PID 1's argv
//!   instead of `/proc/cmdline`), and the units it masks
//!   (`systemd.mask=`), pulls in (`systemd.wants=`) and the target whose
//!   `.wants` directory it uses (`systemd.unit=`) are compared with what the
//!   model's words say.
//! - `dracut-getarg` ([`dracut_getarg`], [`dracut_cmdline`]): dracut 059 and
//!   later (`modules.d/99base/dracut-lib.sh`) no longer split in the shell
//!   for `getarg`/`getargs`: they set `CMDLINE=$(getcmdline)` and run
//!   `dracut-getarg`/`dracut-getargs` (`src/util/util.c`, the `dracut-util`
//!   binary), which walks `CMDLINE` with a copy of the kernel's `next_arg`
//!   and ctype table. `getcmdline` reads `/etc/cmdline.d/*.conf`,
//!   `/etc/cmdline` (both from the initramfs; not modelled: empty) and
//!   `/proc/cmdline` line by line with `read -r`, which trims spaces and
//!   tabs at both ends of each line, and joins everything as
//!   `"$CMDLINE_ETC_D $CMDLINE_ETC $CMDLINE_PROC"`, each part built as
//!   `" line"` per line: so `CMDLINE` is two spaces, then `" " + line` per
//!   line. `dracut-util` does not skip the leading spaces before its first
//!   `next_arg`, so its first word is always an empty key, which no
//!   `getarg` can ask for (an empty search key is a usage error): the model
//!   leaves it out. Checked against real dracut
//!   (`dracut_models_match_real_dracut`, on every dracut found: the host's
//!   `/usr/lib/dracut`, and dracut-core 059 from bookworm and 106 from
//!   bookworm-backports that `scripts/setup.d/55-dracut-readers` unpacks
//!   into `build/dracut-readers/`): a copy of `dracut-lib.sh` whose
//!   `/proc/cmdline` is a file holding [`proc_cmdline`] of the line (and
//!   whose `/etc/cmdline` paths do not exist) is sourced by `sh` (dash) and
//!   by `bash`; the real `getcmdline` output must equal [`dracut_cmdline`],
//!   and `getarg` runs the real `dracut-util` for each key: value, "found
//!   as a flag" and "not found" are compared with the model's words (the
//!   last occurrence wins), and for the lone trailing `"` `getarg` finds
//!   nothing at all (the crash).
//! - `dracut-shell` ([`dracut_shell`]): the places that still split
//!   `CMDLINE` in the shell, e.g. `modules.d/99fs-lib/fs-lib.sh`
//!   (`for _o in $CMDLINE` picks `ro`/`rw`), and any `for x in
//!   $(getargs ...)`: field splitting on the default `IFS` (space, tab,
//!   newline; runs collapse, no empty fields), quotes and backslashes are
//!   plain bytes, then pathname expansion of every field holding `*`, `?`
//!   or `[`, whose result depends on the files present: `None`. Checked
//!   against real dracut in the same test: the real `getcmdline` and the
//!   real `for _o in $CMDLINE` under `sh` (dash) and `bash`, and a pattern
//!   (`rd.brea?`) that the shell really turns into a file's name
//!   (`rd.break`).

#![allow(dead_code)]

use std::fmt;

/// The kernel's command-line buffer size on x86-64 (`COMMAND_LINE_SIZE`),
/// NUL included.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// One word as a reader sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Word {
    pub key: Vec<u8>,
    /// After the `=`, if there was one.
    pub value: Option<Vec<u8>>,
}

impl Word {
    pub fn new(key: &[u8], value: Option<&[u8]>) -> Word {
        Word {
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// `key=value` split at the first `=`; no `=`, no value.
    pub fn split(word: &[u8]) -> Word {
        match word.iter().position(|&b| b == b'=') {
            Some(eq) => Word::new(&word[..eq], Some(&word[eq + 1..])),
            None => Word::new(word, None),
        }
    }

    /// `key` or `key=value`, bytes as written.
    pub fn text(&self) -> Vec<u8> {
        let mut t = self.key.clone();
        if let Some(v) = &self.value {
            t.push(b'=');
            t.extend_from_slice(v);
        }
        t
    }
}

/// `"key"` or `"key"="value"`, bytes escaped: key and value stay apart
/// (`"=a"="b"` is not `""="a=b"`).
impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.key.escape_ascii())?;
        if let Some(v) = &self.value {
            write!(f, "=\"{}\"", v.escape_ascii())?;
        }
        Ok(())
    }
}

/// One reader: its name and its model.
pub struct Reader {
    pub name: &'static str,
    pub read: fn(&[u8]) -> Option<Vec<Word>>,
}

/// Every modelled reader.
pub const READERS: &[Reader] = &[
    Reader {
        name: "kernel",
        read: kernel,
    },
    Reader {
        name: "x86",
        read: x86,
    },
    Reader {
        name: "systemd",
        read: systemd,
    },
    Reader {
        name: "dracut-getarg",
        read: dracut_getarg,
    },
    Reader {
        name: "dracut-shell",
        read: dracut_shell,
    },
];

/// The part of `bytes` before the first NUL (a C string).
fn c_string(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    }
}

/// The command line the kernel keeps from arbitrary boot loader bytes: up to
/// the first NUL, at most `COMMAND_LINE_SIZE - 1` bytes.
pub fn boot_line(raw: &[u8]) -> &[u8] {
    let line = c_string(raw);
    &line[..line.len().min(COMMAND_LINE_SIZE - 1)]
}

/// What `/proc/cmdline` holds for `line`: the line and one newline.
pub fn proc_cmdline(line: &[u8]) -> Vec<u8> {
    let mut p = line.to_vec();
    p.push(b'\n');
    p
}

/// The bytes sealroot checks: `/proc/cmdline` without its one trailing
/// newline (`src/boot/mod.rs`, `proc_cmdline`).
pub fn sealroot_line(line: &[u8]) -> Vec<u8> {
    let mut p = proc_cmdline(line);
    if p.last() == Some(&b'\n') {
        p.pop();
    }
    p
}

/// sealroot's words of the line it checked: `cmdline::words` of the lossy
/// UTF-8 text, as `read_cmdline` parses it.
pub fn sealroot_words(checked: &[u8]) -> Vec<Word> {
    let text = String::from_utf8_lossy(checked);
    sealroot::boot::cmdline::words(&text)
        .into_iter()
        .map(|p| Word::new(p.key.as_bytes(), p.value.map(str::as_bytes)))
        .collect()
}

/// The readers whose words for `line` are not sealroot's, with their words.
pub fn disagreeing(line: &[u8]) -> Vec<(&'static str, Option<Vec<Word>>)> {
    let ours = sealroot_words(&sealroot_line(line));
    READERS
        .iter()
        .map(|r| (r.name, (r.read)(line)))
        .filter(|(_, words)| words.as_ref() != Some(&ours))
        .collect()
}

// ---- kernel: lib/cmdline.c next_arg, lib/ctype.c isspace ----

/// `isspace` of the kernel's ctype table.
pub fn kernel_isspace(b: u8) -> bool {
    matches!(b, 0x09..=0x0d | b' ' | 0xa0)
}

fn skip_kernel_spaces(line: &[u8], mut at: usize) -> usize {
    while at < line.len() && kernel_isspace(line[at]) {
        at += 1;
    }
    at
}

/// One `next_arg` call on the word starting at `start` (not a space):
/// the word and where the next one starts, or `None` for the lone trailing
/// quote whose handling reads outside the string.
fn next_arg(line: &[u8], start: usize) -> Option<(Word, usize)> {
    let quoted = line[start] == b'"';
    let begin = start + usize::from(quoted);
    let mut in_quote = quoted;
    // Index of the separating '=' within the word; one at index 0 is never
    // recorded (the C code uses 0 for "none yet").
    let mut equals: Option<usize> = None;
    let mut end = begin;
    while end < line.len() {
        let c = line[end];
        if kernel_isspace(c) && !in_quote {
            break;
        }
        if equals.is_none() && c == b'=' && end > begin {
            equals = Some(end - begin);
        }
        if c == b'"' {
            in_quote = !in_quote;
        }
        end += 1;
    }
    let len = end - begin;
    if quoted && len == 0 {
        return None;
    }
    // The NUL stores, in the C code's order, on a copy of the word.
    let mut word = line[begin..end].to_vec();
    let mut value_at = None;
    if let Some(eq) = equals {
        word[eq] = 0;
        let mut v = eq + 1;
        if word.get(v) == Some(&b'"') {
            v += 1;
            if word[len - 1] == b'"' {
                word[len - 1] = 0;
            }
        }
        value_at = Some(v);
    }
    if quoted && word[len - 1] == b'"' {
        word[len - 1] = 0;
    }
    let key = c_string(&word).to_vec();
    let value = value_at.map(|v| c_string(&word[v..]).to_vec());
    // The separator after the word is overwritten and stepped over, then
    // the following spaces are skipped.
    let next = if end < line.len() { end + 1 } else { end };
    Some((Word { key, value }, skip_kernel_spaces(line, next)))
}

/// The kernel's words (`parse_args` over `next_arg`), including those after
/// `--` (init's arguments, split the same way).
pub fn kernel(line: &[u8]) -> Option<Vec<Word>> {
    let line = c_string(line);
    let mut words = Vec::new();
    let mut at = skip_kernel_spaces(line, 0);
    while at < line.len() {
        let (word, next) = next_arg(line, at)?;
        words.push(word);
        at = next;
    }
    Some(words)
}

// ---- x86: arch/x86/lib/cmdline.c ----

/// The words x86 early boot option lookups can match: runs of bytes above
/// 0x20, within the first `COMMAND_LINE_SIZE` bytes, up to a NUL.
pub fn x86(line: &[u8]) -> Option<Vec<Word>> {
    let line = c_string(&line[..line.len().min(COMMAND_LINE_SIZE)]);
    Some(
        line.split(|&b| b <= b' ')
            .filter(|w| !w.is_empty())
            .map(Word::split)
            .collect(),
    )
}

// ---- systemd: proc-cmdline.c, extract-word.c, fileio.c ----

/// `WHITESPACE` in systemd, the default separators of `extract_first_word`.
pub const SYSTEMD_SEPARATORS: &[u8] = b" \t\n\r";

/// `strv_split_full(text, NULL, EXTRACT_UNQUOTE|EXTRACT_RELAX|EXTRACT_RETAIN_ESCAPE)`
/// then key/value at the first `=`: what systemd makes of a command line
/// string (the `/proc/cmdline` line, or `SYSTEMD_PROC_CMDLINE`).
pub fn systemd_split(text: &[u8]) -> Vec<Word> {
    let text = c_string(text);
    let is_sep = |b: u8| SYSTEMD_SEPARATORS.contains(&b);
    let mut words = Vec::new();
    let mut at = 0;
    loop {
        while at < text.len() && is_sep(text[at]) {
            at += 1;
        }
        if at == text.len() {
            return words;
        }
        let mut word = Vec::new();
        let mut quote: Option<u8> = None;
        while at < text.len() {
            let c = text[at];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => word.push(c),
                None if c == b'\'' || c == b'"' => quote = Some(c),
                None if is_sep(c) => break,
                None => word.push(c),
            }
            at += 1;
        }
        words.push(Word::split(&word));
    }
}

/// systemd's words: the first line of `/proc/cmdline` (cut at `\n`, `\r`
/// or NUL, as `read_one_line_file` does), split by [`systemd_split`].
pub fn systemd(line: &[u8]) -> Option<Vec<Word>> {
    let proc = proc_cmdline(line);
    let first = proc
        .split(|&b| matches!(b, b'\n' | b'\r' | 0))
        .next()
        .unwrap_or(&[]);
    Some(systemd_split(first))
}

// ---- dracut: dracut-lib.sh getcmdline, dracut-util, shell splitting ----

/// `IFS` whitespace of a POSIX shell's default `IFS`.
fn ifs_white(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n')
}

/// What `read -r _line` leaves of one line: spaces and tabs trimmed at both
/// ends.
fn read_trimmed(l: &[u8]) -> &[u8] {
    let start = l.iter().position(|&b| !ifs_white(b)).unwrap_or(l.len());
    let end = l
        .iter()
        .rposition(|&b| !ifs_white(b))
        .map_or(start, |e| e + 1);
    &l[start..end]
}

/// `CMDLINE=$(getcmdline)` with no `/etc/cmdline` and no
/// `/etc/cmdline.d/*.conf`: `"  "`, then `" " + line` for each line of
/// `/proc/cmdline` that `while read -r _line || [ -n "$_line" ]` reads.
pub fn dracut_cmdline(line: &[u8]) -> Vec<u8> {
    let proc = proc_cmdline(line);
    let mut out = b"  ".to_vec();
    let mut rest: &[u8] = &proc;
    while !rest.is_empty() {
        let (l, terminated, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(p) => (&rest[..p], true, &rest[p + 1..]),
            None => (rest, false, &[][..]),
        };
        let l = read_trimmed(l);
        // An unterminated last line counts only if it is not empty.
        if terminated || !l.is_empty() {
            out.push(b' ');
            out.extend_from_slice(l);
        }
        rest = next;
    }
    out
}

/// The words `dracut-getarg` walks: `next_arg` over `CMDLINE` (the same
/// code as [`kernel`]), without the empty first word no `getarg` can match.
pub fn dracut_getarg(line: &[u8]) -> Option<Vec<Word>> {
    kernel(&dracut_cmdline(line))
}

/// `for _o in $CMDLINE`: fields split on default `IFS` whitespace; `None` if
/// a field holds a pattern character and would be expanded against files.
pub fn dracut_shell(line: &[u8]) -> Option<Vec<Word>> {
    let cmdline = dracut_cmdline(line);
    let fields: Vec<&[u8]> = cmdline
        .split(|&b| ifs_white(b))
        .filter(|f| !f.is_empty())
        .collect();
    if fields
        .iter()
        .any(|f| f.iter().any(|&b| matches!(b, b'*' | b'?' | b'[')))
    {
        return None;
    }
    Some(fields.into_iter().map(Word::split).collect())
}
