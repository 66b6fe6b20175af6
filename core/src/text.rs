//! Client-supplied text in logs and replies: escaped and capped.
//!
//! Categories, method names, publisher ids and anything else a client sends may
//! hold newlines, ANSI escape sequences, invalid UTF-8 or megabytes. Written to a
//! text log as is, they forge log lines, recolour terminals, and make the log grow
//! one byte for one byte sent. Every place that shows such bytes goes through
//! [`shown`] (or [`capped`] for a reply): printable ASCII is kept, everything else
//! is escaped (`\n`, `\x1b`, `\u{202e}`), and only the first [`SHOWN_MAX_BYTES`]
//! bytes of the input are shown, followed by how many were left out.

use std::fmt;

/// Input bytes shown at most by [`shown`]; the rest is summarised as `…(+N bytes)`.
pub const SHOWN_MAX_BYTES: usize = 128;

/// A `Display` of client bytes, escaped and capped (see the [module docs](self)).
#[derive(Clone, Copy)]
pub struct Shown<'a> {
    bytes: &'a [u8],
    cap: usize,
}

/// `bytes` escaped and capped at [`SHOWN_MAX_BYTES`] input bytes, for a log field.
pub fn shown(bytes: &(impl AsRef<[u8]> + ?Sized)) -> Shown<'_> {
    shown_with_cap(bytes.as_ref(), SHOWN_MAX_BYTES)
}

/// `bytes` escaped and capped at `cap` input bytes.
pub fn shown_with_cap(bytes: &[u8], cap: usize) -> Shown<'_> {
    Shown { bytes, cap }
}

/// [`shown`] as an owned string (for a reply or an error value).
pub fn capped(bytes: &(impl AsRef<[u8]> + ?Sized)) -> String {
    shown(bytes).to_string()
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = &self.bytes[..self.bytes.len().min(self.cap)];
        for chunk in head.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    ' '..='~' => fmt::Write::write_char(f, c)?,
                    c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                    c => write!(f, "\\u{{{:x}}}", c as u32)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        let left = self.bytes.len() - head.len();
        if left > 0 {
            write!(f, "…(+{left} bytes)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// [`capped`] text escaped for HTML text and attribute values (`&`, `<`, `>`,
/// `"`, `'`), for names shown on the status pages.
pub fn html(bytes: &(impl AsRef<[u8]> + ?Sized)) -> String {
    let shown = capped(bytes);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_after_capping() {
        assert_eq!(
            html("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(html("a\nb"), "a\\nb", "control characters stay visible");
    }

    #[test]
    fn printable_ascii_is_kept() {
        assert_eq!(capped("clicks_2026"), "clicks_2026");
        assert_eq!(capped("a b~{}"), "a b~{}");
    }

    #[test]
    fn control_characters_newlines_and_ansi_are_escaped() {
        assert_eq!(capped("Log\nINFO forged line"), "Log\\nINFO forged line");
        assert_eq!(capped("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(capped("a\\b\r\t\0\x7f"), "a\\\\b\\r\\t\\x00\\x7f");
    }

    #[test]
    fn non_ascii_and_invalid_utf8_are_escaped() {
        assert_eq!(capped("é\u{202e}"), "\\u{e9}\\u{202e}");
        assert_eq!(capped(&[b'a', 0xff, 0xfe, b'b'][..]), "a\\xff\\xfeb");
    }

    #[test]
    fn long_input_is_capped_with_a_count() {
        let long = vec![b'x'; 8 << 20];
        let out = capped(&long[..]);
        assert_eq!(
            out,
            format!(
                "{}…(+{} bytes)",
                "x".repeat(SHOWN_MAX_BYTES),
                (8 << 20) - 128
            )
        );
        // A cap inside a multi-byte character shows its bytes, never panics.
        let s = "é".repeat(100);
        let out = shown_with_cap(s.as_bytes(), 3).to_string();
        assert_eq!(out, "\\u{e9}\\xc3…(+197 bytes)");
    }

    #[test]
    fn every_output_is_one_printable_line() {
        let all: Vec<u8> = (0..=255u8).collect();
        let out = shown_with_cap(&all, 256).to_string();
        assert!(out.bytes().all(|b| (b' '..=b'~').contains(&b)), "{out}");
    }
}
