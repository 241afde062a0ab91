//! Renders strings that came from the peer or the server so that they
//! cannot drive the terminal: file names, text messages, decline and error
//! reasons, paths inside error messages.
//!
//! A hostile peer could otherwise send an OSC 52 clipboard write
//! (`ESC ] 52 ; c ; ... BEL`), a clear-screen (`ESC [ 2 J`), a carriage
//! return or newline that overwrites or fakes a line ("Received 1 file, all
//! verified"), or a bidi override that shows `exe.txt` for `txt.exe`.
//!
//! What is escaped, and how it shows:
//! - C0 controls and DEL: `\n`, `\r`, `\t`, `\x1b`, `\x7f`, ...;
//! - C1 controls (U+0080-U+009F, e.g. the one-byte CSI U+009B): `\u{9b}`;
//! - bidi embeddings, overrides and isolates (U+202A-U+202E,
//!   U+2066-U+2069), the invisible direction marks (U+200E, U+200F,
//!   U+061C) and the line and paragraph separators (U+2028, U+2029):
//!   `\u{202e}`. The marks are escaped too: they are invisible and reorder
//!   neighbouring text just as well, and no file name needs them.
//!
//! Everything else, non-ASCII letters and emoji included, shows as is.
//! A backslash is left alone (the receiver refuses names that contain one,
//! and text stays readable), so `\x1b` typed literally looks the same as an
//! escaped ESC: the point is that no raw control reaches the terminal.
//!
//! JSON output ([`json_line`]) keeps the exact string for scripts but
//! writes these characters as `\u009b`-style JSON escapes, so the JSON text
//! itself holds no raw control or bidi character either (serde_json
//! escapes C0 already, but not DEL, C1 or bidi).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

/// Whether `c` must not reach a terminal raw.
pub fn must_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// One line: every unsafe character escaped, newlines and tabs included.
/// For names, reasons, addresses and error messages.
pub fn line(s: &str) -> Cow<'_, str> {
    escape_with(s, |_| false)
}

/// A multi-line text message: like [`line`], but newlines and tabs stay
/// (a message of several lines is legitimate; a carriage return is not).
pub fn text(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\n' || c == '\t')
}

/// `value` as one line of JSON with every unsafe character written as a
/// JSON `\uXXXX` escape.
pub fn json_line(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SafeFormatter);
    if serde::Serialize::serialize(value, &mut ser).is_err() {
        return String::from("{}");
    }
    // The formatter writes only valid UTF-8 (whole fragments and ASCII).
    String::from_utf8(out).unwrap_or_else(|_| String::from("{}"))
}

fn escape_with(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| must_escape(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !must_escape(c) || keep(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// serde_json's compact output, with the characters serde_json leaves raw
/// (DEL, C1, bidi) written as `\uXXXX`.
struct SafeFormatter;

impl serde_json::ser::Formatter for SafeFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if must_escape(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_show_as_escapes() {
        assert_eq!(line("plain ✓ é"), "plain ✓ é");
        assert_eq!(
            line("a\x1b]52;c;aGk=\x07b\x1b[2J"),
            "a\\x1b]52;c;aGk=\\x07b\\x1b[2J"
        );
        assert_eq!(line("x\ny\r\tz\x7f"), "x\\ny\\r\\tz\\x7f");
        assert_eq!(line("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(line("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(
            line("\u{2066}\u{2069}\u{200f}"),
            "\\u{2066}\\u{2069}\\u{200f}"
        );
    }

    #[test]
    fn text_keeps_newlines_and_tabs_only() {
        assert_eq!(text("line 1\n\tline 2"), "line 1\n\tline 2");
        assert_eq!(text("a\r\x1b[2Jb\u{85}"), "a\\r\\x1b[2Jb\\u{85}");
    }

    #[test]
    fn json_keeps_the_string_but_no_raw_unsafe_character() {
        let original = "n\x1b[2J\u{9b}\u{202e}\x7f\"\\é";
        let value = serde_json::json!({"name": original});
        let line = json_line(&value);
        assert!(!line.chars().any(must_escape), "{line:?}");
        assert!(
            line.contains("\\u009b") && line.contains("\\u202e"),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["name"], original);
    }
}
