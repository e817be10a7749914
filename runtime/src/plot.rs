//! Plots: learning curves and histograms as PNG (or SVG) files, via plotters.
//!
//! Input: a destination path, labels, and data (line series of `(x, y)` points, or values to
//! bin into a histogram).
//! Output: an 800×500 PNG image (SVG when the path ends in `.svg`).
//!
//! Invariants:
//! - Rendering happens in memory; the file is then written atomically, so a crash never leaves
//!   a truncated image.
//! - Text is rendered with DejaVu Sans embedded in the binary (`assets/DejaVuSans.ttf`), so
//!   plots look the same on every machine and need no system fonts.
//! - Non-finite points are skipped; empty input gives a valid image saying "no data"; a
//!   degenerate range (all values equal) is widened so the axes stay valid. No input panics.
//! - Output is deterministic: the same data gives the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use miette::Diagnostic;
use plotters::coord::Shift;
use plotters::prelude::*;
use thiserror::Error;

use crate::atomic::write_atomic;

/// Image size in pixels.
pub const PLOT_SIZE: (u32, u32) = (800, 500);

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Family name the embedded font is registered under.
const FAMILY: &str = "sans-serif";

/// Series colours (the Tableau 10 palette: distinct, readable on white, colour-blind aware).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named line of a line plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry; an empty name gets no legend entry.
    pub name: String,
    /// Points in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points }
    }
}

/// Why a plot could not be produced.
#[derive(Debug, Error, Diagnostic)]
pub enum PlotError {
    /// plotters failed while drawing.
    #[error("cannot render plot {}: {detail}", path.display())]
    #[diagnostic(code(circ::plot::render), help("this is a bug in circ's plotting; the metrics files still hold the data"))]
    Render {
        /// The plot file.
        path: PathBuf,
        /// The drawing error.
        detail: String,
    },

    /// The image could not be written.
    #[error("cannot write plot {}: {source}", path.display())]
    #[diagnostic(code(circ::plot::write), help("check that the output directory (`--out DIR`) exists and is writable"))]
    Write {
        /// The plot file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Draws `series` as lines on shared axes and writes the image to `path`.
pub fn line_plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), PlotError> {
    let clean: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let pts = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                // Points must stay inside the axis range: plotters' pixel mapping overflows
                // on coordinates far outside it.
                .map(|(x, y)| (clip(x), clip(y)))
                .collect();
            (s.name.as_str(), pts)
        })
        .collect();
    let xs = clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let ys = clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let spec = Spec { title, x_label, y_label, x_range: padded_range(xs, 0.0), y_range: padded_range(ys, 0.05) };
    render(path, &Job::Lines(&spec, &clean))
}

/// Draws a histogram of `values` with `bins` equal-width bins (at least 1) over their finite
/// range, and writes the image to `path`. Non-finite values are skipped.
pub fn histogram_plot(path: &Path, title: &str, x_label: &str, values: &[f64], bins: usize) -> Result<(), PlotError> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).map(clip).collect();
    let bins = bins.max(1);
    let (lo, hi) = padded_range(finite.iter().copied(), 0.0);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in &finite {
        // Clamp so the maximum lands in the last bin instead of one past it.
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    let bars: Vec<(f64, f64, f64)> =
        counts.iter().enumerate().map(|(i, &c)| (lo + i as f64 * width, lo + (i + 1) as f64 * width, c as f64)).collect();
    let spec = Spec { title, x_label, y_label: "count", x_range: (lo, hi), y_range: (0.0, (max.max(1) as f64) * 1.05) };
    render(path, &Job::Bars(&spec, &bars, finite.is_empty()))
}

struct Spec<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

/// Axis bounds beyond which plotters' tick computation misbehaves (a range whose span is not
/// a finite f64 makes it loop forever); values outside are clipped, which for a plot of
/// diverged training is the honest picture anyway.
const AXIS_LIMIT: f64 = 1e300;

fn clip(v: f64) -> f64 {
    v.clamp(-AXIS_LIMIT, AXIS_LIMIT)
}

/// `(min, max)` of the values, widened by `margin` of the span; `(0, 1)` when there are none;
/// a zero-width range is widened around its value so the axis has a scale. The result is
/// always finite with `min < max`.
fn padded_range(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(clip(v));
        hi = hi.max(clip(v));
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span == 0.0 {
        let w = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - w, hi + w);
    }
    (lo - span * margin, hi + span * margin)
}

fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| "the embedded font could not be parsed".to_string())
    })
    .clone()
}

/// What to draw; an enum rather than a closure because the same drawing must run on two
/// backend types (bitmap and SVG) and closures cannot be generic.
enum Job<'a> {
    Lines(&'a Spec<'a>, &'a [(&'a str, Vec<(f64, f64)>)]),
    Bars(&'a Spec<'a>, &'a [(f64, f64, f64)], bool),
}

impl Job<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        match self {
            Job::Lines(spec, series) => draw_lines(root, spec, series),
            Job::Bars(spec, bars, empty) => draw_bars(root, spec, bars, *empty),
        }
    }
}

/// Renders `job` in memory (PNG, or SVG by the path's extension) and writes it atomically.
fn render(path: &Path, job: &Job<'_>) -> Result<(), PlotError> {
    let render_err = |detail: String| PlotError::Render { path: path.to_path_buf(), detail };
    register_font().map_err(render_err)?;
    let (w, h) = PLOT_SIZE;
    let svg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let bytes = if svg {
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
            job.draw(&root).map_err(render_err)?;
            root.present().map_err(|e| render_err(e.to_string()))?;
        }
        s.into_bytes()
    } else {
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let backend = BitMapBackend::<plotters::backend::RGBPixel>::with_buffer_and_format(&mut buf, (w, h))
                .map_err(|e| render_err(e.to_string()))?;
            let root = backend.into_drawing_area();
            job.draw(&root).map_err(render_err)?;
            root.present().map_err(|e| render_err(e.to_string()))?;
        }
        encode_png(&buf, w, h).map_err(|e| render_err(e.to_string()))?
    };
    write_atomic(path, &bytes).map_err(|source| PlotError::Write { path: path.to_path_buf(), source })
}

/// Tick label: integers without a trailing `.0`, at most 4 decimals otherwise, scientific
/// notation for very large or small magnitudes.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw_lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &Spec<'_>, series: &[(&str, Vec<(f64, f64)>)]) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(spec.x_range.0..spec.x_range.1, spec.y_range.0..spec.y_range.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_label)
        .y_desc(spec.y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(244, 244, 244))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(err)?;
    let mut any_point = false;
    let mut any_legend = false;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        any_point |= !pts.is_empty();
        let drawn = if pts.len() == 1 {
            // A line through one point is invisible; mark it instead.
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?
        } else {
            chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2))).map_err(err)?
        };
        if !name.is_empty() {
            any_legend = true;
            drawn.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
    }
    if any_legend {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    if !any_point {
        no_data(root)?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &Spec<'_>,
    bars: &[(f64, f64, f64)],
    empty: bool,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(spec.x_range.0..spec.x_range.1, spec.y_range.0..spec.y_range.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_label)
        .y_desc(spec.y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(RGBColor(244, 244, 244))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(err)?;
    let fill = COLORS[0];
    chart
        .draw_series(bars.iter().filter(|b| b.2 > 0.0).map(|&(a, b, c)| Rectangle::new([(a, 0.0), (b, c)], fill.filled())))
        .map_err(err)?;
    if empty {
        no_data(root)?;
    }
    Ok(())
}

fn no_data<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let (w, h) = root.dim_in_pixel();
    let style = TextStyle::from((FAMILY, 20).into_font()).color(&RGBColor(120, 120, 120)).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Center,
    ));
    root.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style)).map_err(err)
}

/// Encodes an RGB8 buffer as PNG: one IHDR, one zlib-compressed IDAT (filter type 0 on every
/// row: plots are mostly flat colour, which deflate already compresses well), IEND.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::io::Result<Vec<u8>> {
    let row = w as usize * 3;
    if rgb.len() != row * h as usize {
        return Err(std::io::Error::other("pixel buffer size does not match the image"));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for line in rgb.chunks_exact(row) {
        z.write_all(&[0])?;
        z.write_all(line)?;
    }
    let idat = z.finish()?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, no filter set, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::tests::scratch_dir;
    use std::io::Read;

    /// Decodes a PNG written by `encode_png` (checking signature, chunk CRCs and layout) and
    /// returns (width, height, rgb pixels).
    fn decode_png(b: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let mut at = 8;
        let (mut w, mut h, mut idat) = (0, 0, Vec::new());
        let mut kinds = Vec::new();
        while at < b.len() {
            let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            let kind = &b[at + 4..at + 8];
            let data = &b[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(b[at + 8 + len..at + 12 + len].try_into().unwrap());
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(kind);
            hasher.update(data);
            assert_eq!(hasher.finalize(), crc, "chunk CRC");
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            at += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
        let row = w as usize * 3 + 1;
        assert_eq!(raw.len(), row * h as usize);
        let mut px = Vec::new();
        for r in raw.chunks_exact(row) {
            assert_eq!(r[0], 0, "filter type 0");
            px.extend_from_slice(&r[1..]);
        }
        (w, h, px)
    }

    fn count_color(px: &[u8], c: RGBColor) -> usize {
        px.chunks_exact(3).filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2).count()
    }

    #[test]
    fn line_plot_writes_a_valid_png_with_the_series_drawn() {
        let dir = scratch_dir("plot");
        let p = dir.join("curve.png");
        let loss: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (-(i as f64) / 10.0).exp())).collect();
        let mut acc: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 1.0 - 0.5 / (1.0 + i as f64))).collect();
        acc[10].1 = f64::NAN; // skipped, not fatal
        acc[11].0 = f64::INFINITY;
        line_plot(&p, "learning curve", "step", "value", &[Series::new("loss", loss), Series::new("test acc", acc)]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.len() > 1000);
        let (w, h, px) = decode_png(&bytes);
        assert_eq!((w, h), PLOT_SIZE);
        assert!(count_color(&px, WHITE) > px.len() / 3 / 2, "mostly white background");
        // Both series colours appear (lines plus legend swatches).
        assert!(count_color(&px, COLORS[0]) > 100, "first series drawn");
        assert!(count_color(&px, COLORS[1]) > 100, "second series drawn");
        // Deterministic output.
        line_plot(
            &dir.join("again.png"),
            "learning curve",
            "step",
            "value",
            &[
                Series::new("loss", (0..50).map(|i| (i as f64, (-(i as f64) / 10.0).exp())).collect()),
                Series::new("test acc", {
                    let mut a: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 1.0 - 0.5 / (1.0 + i as f64))).collect();
                    a[10].1 = f64::NAN;
                    a[11].0 = f64::INFINITY;
                    a
                }),
            ],
        )
        .unwrap();
        assert_eq!(bytes, std::fs::read(dir.join("again.png")).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn degenerate_inputs_still_give_images() {
        let dir = scratch_dir("plot-degenerate");
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![Series::new("empty", vec![])],
            vec![Series::new("nan", vec![(f64::NAN, 1.0), (2.0, f64::INFINITY)])],
            vec![Series::new("one", vec![(3.0, 3.0)])],
            vec![Series::new("flat", vec![(0.0, 5.0), (1.0, 5.0)])],
            vec![Series::new("", vec![(0.0, -f64::MAX), (1.0, f64::MAX)])],
            vec![Series::new("close", vec![(1e15, 1e15), (1e15 + 0.125, 1e15 + 1e-3)])],
            vec![Series::new("tiny", vec![(1e-300, 5e-324), (2e-300, 1e-310)])],
            vec![Series::new("neg", vec![(-1e200, -3e250), (-1e199, -1e250)])],
        ];
        for (i, s) in cases.iter().enumerate() {
            let p = dir.join(format!("{i}.png"));
            line_plot(&p, "t", "x", "y", s).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let (w, h, _) = decode_png(&std::fs::read(&p).unwrap());
            assert_eq!((w, h), PLOT_SIZE);
        }
        let (_, _, px) = decode_png(&std::fs::read(dir.join("3.png")).unwrap());
        assert!(count_color(&px, COLORS[0]) > 10, "single point is marked");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn histogram_png_and_svg() {
        let dir = scratch_dir("plot-hist");
        let values: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64 / 10.0 - 5.0).collect();
        let p = dir.join("w.png");
        histogram_plot(&p, "weights", "w", &values, 20).unwrap();
        let (_, _, px) = decode_png(&std::fs::read(&p).unwrap());
        assert!(count_color(&px, COLORS[0]) > 5000, "bars drawn");
        for (i, v) in [vec![], vec![f64::NAN], vec![1.0; 10]].iter().enumerate() {
            histogram_plot(&dir.join(format!("h{i}.png")), "h", "x", v, 0).unwrap();
        }
        let s = dir.join("w.svg");
        histogram_plot(&s, "weights", "w", &values, 20).unwrap();
        let text = std::fs::read_to_string(&s).unwrap();
        assert!(text.starts_with("<svg") && text.contains("weights"));
        line_plot(&dir.join("l.SVG"), "curve", "x", "y", &[Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)])]).unwrap();
        assert!(std::fs::read_to_string(dir.join("l.SVG")).unwrap().contains("<svg"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick(20.0), "20");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(1.0 / 3.0), "0.3333");
        assert_eq!(tick(2.5e7), "2.50e7");
        assert_eq!(tick(1e-5), "1.00e-5");
    }

    #[test]
    fn unwritable_destination_is_an_error() {
        let dir = scratch_dir("plot-err");
        let p = dir.join("missing/dir/x.png");
        let e = line_plot(&p, "t", "x", "y", &[]).unwrap_err();
        assert!(matches!(e, PlotError::Write { .. }));
        assert!(e.to_string().contains("missing/dir/x.png"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
