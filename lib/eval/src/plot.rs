//! Score-against-step charts as PNG (plotters' bitmap backend). Text is drawn with a small
//! 3×5 pixel font defined here (upper-case letters, digits, a few signs), so no system font or
//! font file is needed.

use std::path::Path;

use openseek_common::Failure;
use plotters::prelude::*;

/// 3×5 glyphs, rows top to bottom, `#` = ink.
fn glyph(c: char) -> Option<&'static str> {
    Some(match c.to_ascii_uppercase() {
        'A' => ".#.#.#####.##.#", 'B' => "##.#.###.#.###.", 'C' => ".###..#..#...##",
        'D' => "##.#.##.##.###.", 'E' => "####..##.#..###", 'F' => "####..##.#..#..",
        'G' => ".###..#.##.#.##", 'H' => "#.##.#####.##.#", 'I' => "###.#..#..#.###",
        'J' => "..#..#..##.#.#.", 'K' => "#.##.###.#.##.#", 'L' => "#..#..#..#..###",
        'M' => "#.########.##.#", 'N' => "##.#.##.##.##.#", 'O' => ".#.#.##.##.#.#.",
        'P' => "##.#.###.#..#..", 'Q' => ".#.#.##.###..##", 'R' => "##.#.###.#.##.#",
        'S' => ".###...#...###.", 'T' => "###.#..#..#..#.", 'U' => "#.##.##.##.####",
        'V' => "#.##.##.##.#.#.", 'W' => "#.##.########.#", 'X' => "#.##.#.#.#.##.#",
        'Y' => "#.##.#.#..#..#.", 'Z' => "###..#.#.#..###", '0' => "####.##.##.####",
        '1' => ".#.##..#..#.###", '2' => "###..#####..###", '3' => "###..####..####",
        '4' => "#.##.####..#..#", '5' => "####..###..####", '6' => "####..####.####",
        '7' => "###..#..#..#..#", '8' => "####.#####.####", '9' => "####.####..####",
        '.' => ".............#.", '-' => "......###......", '(' => ".#.#..#..#...#.",
        ')' => ".#...#..#..#.#.", ':' => "....#.....#....", '_' => "............###",
        '+' => "....#.###.#....", ' ' => "...............",
        _ => return None,
    })
}

/// Draw `text` with its top-left corner at (x, y), each font pixel `scale` screen pixels.
fn text<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, s: &str, x: i32, y: i32, scale: i32, color: &RGBColor) {
    let mut cx = x;
    for c in s.chars() {
        let g = glyph(c).unwrap_or("###############");
        for (i, ch) in g.chars().enumerate() {
            if ch == '#' {
                let (gx, gy) = ((i % 3) as i32, (i / 3) as i32);
                // The far corner is exclusive: a font pixel is scale × scale screen pixels.
                let _ = area.draw(&Rectangle::new([(cx + gx * scale, y + gy * scale), (cx + (gx + 1) * scale, y + (gy + 1) * scale)], color.filled()));
            }
        }
        cx += 4 * scale;
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 4 * scale - scale
}

/// A value label: integers plainly, else with up to 2 decimals.
fn label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Evenly spaced "nice" ticks (1, 2, 5 × 10^k) covering [lo, hi].
fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// A PNG line chart of `points` (training step, score ×100) titled `title`, written atomically.
pub fn score_vs_step(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<(), Failure> {
    let temp = openseek_common::AtomicOutputs::temp_path_for(path).with_extension("png");
    draw(&temp, title, points).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Failure::io(format!("{}: cannot draw the chart: {e}", path.display()))
    })?;
    std::fs::rename(&temp, path).map_err(|e| Failure::io_at(path, "cannot rename into place", &e))
}

fn draw(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let (w, h) = (640i32, 400i32);
    let area = BitMapBackend::new(path, (w as u32, h as u32)).into_drawing_area();
    area.fill(&WHITE)?;
    let (left, right, top, bottom) = (70, 20, 40, 50);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let (mut x0, mut x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 - x0 < 1e-9 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let pad = ((y1 - y0) * 0.1).max(0.5);
    y0 = (y0 - pad).max(0.0);
    y1 += pad;
    let sx = |x: f64| left + ((x - x0) / (x1 - x0) * pw as f64).round() as i32;
    let sy = |y: f64| top + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i32;
    let grey = RGBColor(220, 220, 220);
    let ink = RGBColor(40, 40, 40);
    for t in ticks(y0, y1, 6) {
        let y = sy(t);
        area.draw(&PathElement::new(vec![(left, y), (left + pw, y)], grey))?;
        let l = label(t);
        text(&area, &l, left - 8 - text_width(&l, 2), y - 5, 2, &ink);
    }
    for t in ticks(x0, x1, 6) {
        let x = sx(t);
        area.draw(&PathElement::new(vec![(x, top), (x, top + ph)], grey))?;
        let l = label(t);
        text(&area, &l, x - text_width(&l, 2) / 2, top + ph + 8, 2, &ink);
    }
    area.draw(&Rectangle::new([(left, top), (left + pw, top + ph)], ink.stroke_width(1)))?;
    let blue = RGBColor(31, 119, 180);
    let line: Vec<(i32, i32)> = points.iter().map(|&(x, y)| (sx(x), sy(y))).collect();
    area.draw(&PathElement::new(line.clone(), blue.stroke_width(2)))?;
    for p in &line {
        area.draw(&Circle::new(*p, 4, blue.filled()))?;
    }
    text(&area, title, left, 12, 3, &ink);
    let xl = "STEP";
    text(&area, xl, left + pw / 2 - text_width(xl, 2) / 2, h - 18, 2, &ink);
    area.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_has_15_cells() {
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-():_+ ".chars() {
            let g = glyph(c).unwrap();
            assert_eq!(g.len(), 15, "{c:?}");
        }
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(720.0, 3600.0, 6), vec![1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0]);
    }

    #[test]
    fn draws_a_png() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("HellaSwag.png");
        score_vs_step(&p, "HellaSwag", &[(720.0, 30.5), (1440.0, 33.0), (2160.0, 34.25)]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        score_vs_step(&p, "one point", &[(5.0, 1.0)]).unwrap();
    }
}
