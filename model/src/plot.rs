//! Training curves as a PNG: the trainer's `loss.png`.
//!
//! `plot_curves` draws each curve (training loss, validation loss, ...) as one coloured line on
//! shared axes, with a legend, into an 800 x 500 PNG. It is called again after every evaluation,
//! so it must be cheap and must never leave a broken file behind:
//!
//! 1. plotters draws into an RGB buffer in memory, [HEIGHT, WIDTH, 3] bytes, row by row;
//! 2. the `png` crate encodes that buffer (plotters' own file output guesses the format from the
//!    file's extension, which would refuse the temporary name of step 3);
//! 3. the bytes go to `<name>.tmp` in the target's folder, which is then renamed over the
//!    target. A rename within one folder is atomic, so someone watching `loss.png` sees the old
//!    plot or the new one, never half of one.
//!
//! Text needs a font, and a CI machine may have no fontconfig, so the font is compiled in:
//! DejaVu Sans (`model/assets/DejaVuSans.ttf`, licence beside it), registered once with plotters
//! under the family name every text style here uses.
//!
//! The analysis plots (`analysis/plots.rs`) reuse the font, the palette, the encoder and the
//! atomic write from here.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The image size in pixels.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;

/// The family every text style asks for; the embedded font is registered under it.
pub(crate) const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The y axis reaches this fraction of the data's span below the lowest point and above the
/// highest, so that neither extreme sits on the frame.
const Y_MARGIN: f64 = 0.05;

/// Line colours, used in turn: matplotlib's default cycle, ten colours that read on white.
pub(crate) const PALETTE: [RGBColor; 10] = [
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

/// Written in the middle of a plot that has no finite point to draw.
const EMPTY_NOTE: &str = "no finite points to plot yet";

/// One line of the plot: (x, y) points in the order they are joined, such as (step, loss).
#[derive(Clone, Copy, Debug)]
pub struct Curve<'a> {
    /// The curve's name in the legend.
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters or the PNG encoder failed: a bug here rather than a problem with the data.
    #[error("cannot render plot {path}: {reason}")]
    Render { path: PathBuf, reason: String },

    #[error("cannot write plot {path}: {source}; check that its folder exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Draws `curves` into the PNG at `path`, replacing any file there atomically.
///
/// The axes span the data: x from the smallest to the largest x, y from a little below the
/// lowest y to a little above the highest, over all curves. Points with a NaN or infinite
/// coordinate are skipped (a line joins its neighbours across them), so a diverged loss does
/// not wreck the axes. No curves, or curves with no finite point, still give a valid plot:
/// empty axes on [0, 1] with a note, so the trainer may call this before its first evaluation.
pub fn plot_curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    curves: &[Curve],
) -> Result<(), PlotError> {
    let render_error = |reason: String| PlotError::Render {
        path: path.to_path_buf(),
        reason,
    };
    if !register_embedded_font() {
        return Err(render_error(
            "the embedded font DejaVuSans.ttf could not be loaded".into(),
        ));
    }
    let mut rgb = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(&mut rgb, title, x_label, y_label, curves).map_err(|e| render_error(e.to_string()))?;
    let png = encode_png(&rgb, WIDTH, HEIGHT).map_err(|e| render_error(e.to_string()))?;
    write_atomically(path, &png).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers the embedded font with plotters under `FONT` the first time it is called (later
/// calls only read the answer); whether that worked. Without it, drawing any text fails.
pub(crate) fn register_embedded_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok())
}

/// What plotters' drawing calls return on the in-memory bitmap backend.
pub(crate) type DrawResult =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

/// Draws the whole figure into `rgb`, [HEIGHT, WIDTH, 3] bytes.
fn draw(rgb: &mut [u8], title: &str, x_label: &str, y_label: &str, curves: &[Curve]) -> DrawResult {
    let root = BitMapBackend::with_buffer(rgb, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let bounds = data_bounds(curves);
    let (x_range, y_range) = match bounds.clone() {
        Some((x, y)) => (pad_x(x), pad_y(y)),
        None => (0.0..1.0, 0.0..1.0),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&x_tick_label)
        .y_desc(y_label)
        .label_style((FONT, 14))
        .draw()?;

    for (i, curve) in curves.iter().enumerate() {
        let style = PALETTE[i % PALETTE.len()].stroke_width(2);
        let points: Vec<(f64, f64)> = curve
            .points
            .iter()
            .copied()
            .filter(|&p| is_finite(p))
            .collect();
        // a line needs two points: a curve of one (the first evaluation) is drawn as a dot
        if points.len() == 1 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
        }
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(curve.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    if bounds.is_none() {
        draw_note(&root, EMPTY_NOTE)?;
    }
    root.present()
}

/// Writes `note` in the middle of the figure.
fn draw_note(root: &DrawingArea<BitMapBackend, Shift>, note: &str) -> DrawResult {
    let centre = Pos::new(HPos::Center, VPos::Center);
    let style = TextStyle::from((FONT, 18)).color(&BLACK).pos(centre);
    root.draw_text(note, &style, (WIDTH as i32 / 2, HEIGHT as i32 / 2))
}

/// A tick label on the x axis: whole numbers (steps, tokens) without plotters' ".0".
fn x_tick_label(x: &f64) -> String {
    // below 2^53 every whole f64 is an exact integer, so "{:.0}" prints it exactly
    const EXACT_INTEGERS: f64 = 9.007_199_254_740_992e15;
    if x.fract() == 0.0 && x.abs() < EXACT_INTEGERS {
        format!("{x:.0}")
    } else {
        RangedCoordf64::format(x)
    }
}

fn is_finite((x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite()
}

/// The smallest x and y ranges that hold every finite point, or `None` when there is none.
fn data_bounds(curves: &[Curve]) -> Option<(Range<f64>, Range<f64>)> {
    let mut points = curves
        .iter()
        .flat_map(|c| c.points.iter().copied())
        .filter(|&p| is_finite(p));
    let (x0, y0) = points.next()?;
    let (mut x, mut y) = (x0..x0, y0..y0);
    for (px, py) in points {
        x = x.start.min(px)..x.end.max(px);
        y = y.start.min(py)..y.end.max(py);
    }
    Some((x, y))
}

/// The x axis is the data's range, widened to one unit either side when it is a single value
/// (the first evaluation), since plotters cannot draw an empty range.
fn pad_x(x: Range<f64>) -> Range<f64> {
    if x.start < x.end {
        x
    } else {
        x.start - 1.0..x.end + 1.0
    }
}

/// The y axis is the data's range with a margin of `Y_MARGIN` of its span each side; a flat
/// curve gets a margin of `Y_MARGIN` of its value instead (at least 0.001), so it shows too.
fn pad_y(y: Range<f64>) -> Range<f64> {
    const MIN_MARGIN: f64 = 1e-3;
    let span = y.end - y.start;
    let margin = if span > 0.0 {
        Y_MARGIN * span
    } else {
        (Y_MARGIN * y.start.abs()).max(MIN_MARGIN)
    };
    y.start - margin..y.end + margin
}

/// The PNG file of an 8-bit RGB buffer of `width` x `height` pixels.
pub(crate) fn encode_png(
    rgb: &[u8],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // a filter chosen per row and the best deflate: plots are flat colour and thin lines, and
    // this makes their files 3-7x smaller for a few milliseconds more per image
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// Writes `bytes` to `<path>.tmp`, then renames that over `path`. On failure the temporary file
/// is removed and `path` is left as it was. Two processes plotting to the same path at once
/// would share the temporary file; the trainer writes each run's plot from one thread.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let Some(name) = path.file_name() else {
        let msg = "the path does not name a file";
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = write_synced(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // best effort: the error worth reporting is the first one
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to a new file at `path` and waits until they are on disk, so that after the
/// rename a crash cannot leave `loss.png` naming a file whose contents were never written.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// The (width, height) of a PNG file, from its IHDR chunk, which must come first: after the
    /// 8-byte signature, a 4-byte length, the type "IHDR", then width and height as big-endian
    /// u32s at bytes 16..20 and 20..24.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert!(
            bytes.len() > 24,
            "{} bytes is too short for a PNG",
            bytes.len()
        );
        assert_eq!(bytes[..8], PNG_SIGNATURE, "not a PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is not IHDR");
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    /// The decoded RGB pixels of a PNG file.
    fn decode_rgb(bytes: &[u8]) -> Vec<u8> {
        let mut reader = png::Decoder::new(bytes).read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        rgb.truncate(info.buffer_size());
        rgb
    }

    fn count_pixels(rgb: &[u8], colour: RGBColor) -> usize {
        let RGBColor(r, g, b) = colour;
        rgb.chunks_exact(3).filter(|p| *p == [r, g, b]).count()
    }

    fn falling(n: usize, offset: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 10.0, offset + 5.0 / (1.0 + i as f64)))
            .collect()
    }

    #[test]
    fn writes_an_800_by_500_png_with_one_line_per_curve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let (train, val) = (falling(50, 1.0), falling(10, 1.5));
        let curves = [
            Curve {
                label: "train",
                points: &train,
            },
            Curve {
                label: "val",
                points: &val,
            },
        ];
        plot_curves(&path, "loss", "step", "loss (nats)", &curves).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), (WIDTH, HEIGHT));
        // both lines are drawn, in the first two palette colours
        let rgb = decode_rgb(&bytes);
        assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
        assert!(
            count_pixels(&rgb, PALETTE[0]) > 100,
            "the train line is missing"
        );
        assert!(
            count_pixels(&rgb, PALETTE[1]) > 100,
            "the val line is missing"
        );
        // a second plot replaces the first, and no temporary file is left behind
        plot_curves(&path, "loss", "step", "loss", &curves[..1]).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["loss.png"]);
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let points = [
            (0.0, 3.0),
            (10.0, f64::NAN),
            (20.0, 2.0),
            (f64::INFINITY, 1.0),
            (40.0, f64::NEG_INFINITY),
            (50.0, 1.5),
        ];
        let curves = [Curve {
            label: "train",
            points: &points,
        }];
        plot_curves(&path, "loss", "step", "loss", &curves).unwrap();
        assert_eq!(png_size(&std::fs::read(&path).unwrap()), (WIDTH, HEIGHT));
        // the axes come from the finite points only
        assert_eq!(data_bounds(&curves), Some((0.0..50.0, 1.5..3.0)));
    }

    #[test]
    fn no_finite_points_still_give_a_plot() {
        let dir = tempfile::tempdir().unwrap();
        let nan = [(f64::NAN, f64::NAN)];
        let cases: [&[Curve]; 3] = [
            &[],
            &[Curve {
                label: "train",
                points: &[],
            }],
            &[Curve {
                label: "train",
                points: &nan,
            }],
        ];
        for (i, curves) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("empty{i}.png"));
            assert_eq!(data_bounds(curves), None);
            plot_curves(&path, "loss", "step", "loss", curves).unwrap();
            assert_eq!(png_size(&std::fs::read(&path).unwrap()), (WIDTH, HEIGHT));
        }
    }

    #[test]
    fn axes_have_margins_and_whole_step_labels() {
        let close = |r: Range<f64>, lo: f64, hi: f64| {
            assert!(
                (r.start - lo).abs() < 1e-12 && (r.end - hi).abs() < 1e-12,
                "{r:?}"
            );
        };
        // span 2 -> margin 0.05 * 2 = 0.1 each side
        close(pad_y(1.0..3.0), 0.9, 3.1);
        // flat at 2 -> margin 0.05 * 2 = 0.1; flat at 0 -> the minimum margin 0.001
        close(pad_y(2.0..2.0), 1.9, 2.1);
        close(pad_y(0.0..0.0), -1e-3, 1e-3);
        assert_eq!(x_tick_label(&200.0), "200");
        assert_eq!(x_tick_label(&-0.5), "-0.5");
        // one step -> one unit either side; a real range is kept
        assert_eq!(pad_x(5.0..5.0), 4.0..6.0);
        assert_eq!(pad_x(0.0..100.0), 0.0..100.0);
    }

    #[test]
    fn a_missing_folder_is_an_error_that_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("loss.png");
        let points = falling(5, 1.0);
        let curves = [Curve {
            label: "train",
            points: &points,
        }];
        let err = plot_curves(&path, "loss", "step", "loss", &curves).unwrap_err();
        assert!(matches!(err, PlotError::Write { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(!path.exists());
    }
}
