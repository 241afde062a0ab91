//! A QR code on the terminal (`ferry send --qr`), drawn with Unicode half
//! blocks: one character cell holds two modules, one above the other, so
//! the code stays about square and small.
//!
//! What makes it scan:
//! - the quiet zone: 4 light modules on every side, as ISO/IEC 18004 asks;
//! - dark modules on light: on a colour terminal every line is drawn black
//!   on white (ANSI 30;47) whatever the terminal's own colours; without
//!   colours (`NO_COLOR`, or stdout not a terminal) the blocks are drawn
//!   for the LIGHT modules, so the usual light-text-on-dark terminal shows
//!   dark on light (as `qrencode -t UTF8` does).

use std::io::{IsTerminal, Write};

use qrcode::{Color, QrCode};

use crate::output::Output;

/// Light modules around the code.
pub const QUIET_ZONE: usize = 4;

/// How the modules become characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Blocks are the dark modules, black on a white background.
    Colour,
    /// Blocks are the light modules, in the terminal's text colour.
    Plain,
}

/// The QR code for `text` as lines of text, quiet zone included.
pub fn render(text: &str, style: Style) -> Result<Vec<String>, qrcode::types::QrError> {
    let code = QrCode::new(text.as_bytes())?;
    Ok(draw(code.width(), &code.to_colors(), style))
}

/// Prints the QR code for `text` on stdout, beside the other human lines
/// (nothing in `--json` mode). Written directly rather than through
/// [`Output::say`], which would escape the colour sequences.
pub fn show(out: &Output, text: &str) -> Result<(), qrcode::types::QrError> {
    if out.is_json() {
        return Ok(());
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let style = if colour { Style::Colour } else { Style::Plain };
    let lines = render(text, style)?;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    Ok(())
}

/// `ferry send --qr`: the QR code of the receiver's URI, the URI as text,
/// and how to use it; or why there is none.
pub fn show_uri(out: &Output, uri: Result<&str, &crate::uri::UriError>) {
    let shown = uri.map_err(|e| e.to_string()).and_then(|uri| {
        show(out, uri).map_err(|e| format!("the URI does not fit a QR code ({e})"))?;
        Ok(uri)
    });
    match shown {
        Ok(uri) => {
            out.say(format!("URI: {uri}"));
            out.say(
                "Scan the QR code, or paste the URI when `ferry receive` asks for the code: \
                 it names the server too, so --server is not needed.",
            );
        }
        Err(why) => out.say(format!(
            "No QR code for this server: {}",
            crate::escape::line(&why)
        )),
    }
}

/// Draws a `width` x `width` module matrix (row by row) with the quiet
/// zone around it, two module rows per line.
fn draw(width: usize, modules: &[Color], style: Style) -> Vec<String> {
    let size = width + 2 * QUIET_ZONE;
    let dark = |x: usize, y: usize| {
        let (Some(x), Some(y)) = (x.checked_sub(QUIET_ZONE), y.checked_sub(QUIET_ZONE)) else {
            return false;
        };
        x < width && y < width && modules[y * width + x] == Color::Dark
    };
    let inked = |x, y| match style {
        Style::Colour => dark(x, y),
        Style::Plain => !dark(x, y),
    };
    (0..size.div_ceil(2))
        .map(|row| {
            let (top, bottom) = (2 * row, 2 * row + 1);
            let cells: String = (0..size)
                .map(|x| {
                    // Below an odd last row lies more quiet zone.
                    let below = bottom < size && inked(x, bottom);
                    let below = below || (bottom >= size && style == Style::Plain);
                    match (inked(x, top), below) {
                        (true, true) => '\u{2588}',  // █
                        (true, false) => '\u{2580}', // ▀
                        (false, true) => '\u{2584}', // ▄
                        (false, false) => ' ',
                    }
                })
                .collect();
            match style {
                Style::Colour => format!("\x1b[30;47m{cells}\x1b[0m"),
                Style::Plain => cells,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "ferry://rendezvous.example.org:8443/4711-orbit-lantern";

    /// The drawing read back as a terminal shows it: `true` for a dark
    /// pixel, each character two pixels high. `Colour` draws black ink on
    /// white; `Plain` ink is the light text colour of a dark terminal.
    fn pixels(lines: &[String], style: Style) -> Vec<Vec<bool>> {
        let mut rows = Vec::new();
        for line in lines {
            let cells = match style {
                Style::Colour => line
                    .strip_prefix("\x1b[30;47m")
                    .and_then(|l| l.strip_suffix("\x1b[0m"))
                    .expect("every line is black on white"),
                Style::Plain => line.as_str(),
            };
            let halves: Vec<(bool, bool)> = cells
                .chars()
                .map(|c| match c {
                    '\u{2588}' => (true, true),
                    '\u{2580}' => (true, false),
                    '\u{2584}' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            let dark = |ink: bool| if style == Style::Colour { ink } else { !ink };
            rows.push(halves.iter().map(|h| dark(h.0)).collect());
            rows.push(halves.iter().map(|h| dark(h.1)).collect());
        }
        rows
    }

    /// Decodes a pixel grid with rqrr, each pixel scaled to 4x4.
    fn decode(rows: &[Vec<bool>]) -> Vec<String> {
        let scale = 4;
        let (w, h) = (rows[0].len() * scale, rows.len() * scale);
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
            if rows[y / scale][x / scale] { 0 } else { 255 }
        });
        image
            .detect_grids()
            .iter()
            .map(|grid| grid.decode().expect("decodes").1)
            .collect()
    }

    #[test]
    fn the_drawn_code_decodes_to_the_uri_in_both_styles() {
        for style in [Style::Colour, Style::Plain] {
            let lines = render(URI, style).unwrap();
            let rows = pixels(&lines, style);
            // Four light modules on every side (the odd last row is padding).
            let size = rows[0].len();
            let light_rows = rows[..4].iter().chain(&rows[size - 4..]);
            assert!(light_rows.flatten().all(|&dark| !dark), "{style:?}");
            let sides = rows
                .iter()
                .flat_map(|r| r[..4].iter().chain(&r[size - 4..]));
            assert!(sides.copied().all(|dark| !dark), "{style:?}");
            assert_eq!(decode(&rows), vec![URI.to_string()], "{style:?}");
        }
    }

    #[test]
    fn modules_map_to_half_blocks_two_rows_a_line_inside_a_quiet_zone() {
        let code = QrCode::new(URI.as_bytes()).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        for style in [Style::Colour, Style::Plain] {
            let lines = draw(width, &colors, style);
            let size = width + 2 * QUIET_ZONE;
            assert_eq!(lines.len(), size.div_ceil(2), "two module rows per line");
            let rows = pixels(&lines, style);
            for (y, row) in rows.iter().enumerate() {
                assert_eq!(row.len(), size, "one character per module column");
                for (x, &pixel) in row.iter().enumerate() {
                    let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&x)
                        && (QUIET_ZONE..QUIET_ZONE + width).contains(&y);
                    let expected = inside
                        && colors[(y - QUIET_ZONE) * width + (x - QUIET_ZONE)] == Color::Dark;
                    assert_eq!(pixel, expected, "{style:?} module ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn an_odd_last_row_is_padded_with_light() {
        // A 1x1 "code": 9 rows with the quiet zone, so the last line holds
        // one row and light below it.
        let lines = draw(1, &[Color::Dark], Style::Plain);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4], "\u{2588}".repeat(9));
        assert_eq!(lines[2].chars().nth(4), Some('\u{2584}'));
        let lines = draw(1, &[Color::Dark], Style::Colour);
        assert_eq!(lines[4], "\x1b[30;47m         \x1b[0m");
        assert_eq!(lines[2].chars().filter(|&c| c == '\u{2580}').count(), 1);
    }
}
