//! The analysis's files: what `analyze` writes into its output folder, and how each reads.
//!
//! | file | what |
//! |---|---|
//! | `spectra.json` | every eigenvalue at every point, with a per-kind summary per point |
//! | `spectra.csv` | the same eigenvalues, one row each: t, matrix, head, rank, re, im, abs |
//! | `{qk,ov,mlp}_magnitude.png` | `plots::plot_magnitudes` |
//! | `{qk,ov,mlp}_complex.png` | `plots::plot_complex` |
//! | `sensitivity.json` | every source token's exponents, largest one and Kaplan-Yorke dimension |
//! | `sensitivity.html` | the prompt, each token coloured by its largest exponent |
//! | `sensitivity_heatmap.png` | `plots::plot_heatmap` of every exponent of every token |
//!
//! Every file is written whole to a temporary name and renamed into place, so a reader never
//! sees half of one.
//!
//! Reference test: `model/tests/analysis_cli.rs`.

use super::plots::{self, MagnitudePanel, ScatterPanel};
use super::sensitivity::Sensitivity;
use super::spectra::{Axis, MatrixKind, SpectraAt, Summary};
use crate::plot::write_atomically;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const SPECTRA_JSON: &str = "spectra.json";
pub const SPECTRA_CSV: &str = "spectra.csv";
pub const SENSITIVITY_JSON: &str = "sensitivity.json";
pub const SENSITIVITY_HTML: &str = "sensitivity.html";
pub const SENSITIVITY_HEATMAP: &str = "sensitivity_heatmap.png";

/// The magnitude plot of one kind of matrix.
pub fn magnitude_file(kind: MatrixKind) -> String {
    format!("{}_magnitude.png", kind.name())
}

/// The complex-plane plot of one kind of matrix.
pub fn complex_file(kind: MatrixKind) -> String {
    format!("{}_complex.png", kind.name())
}

/// Every file `write_spectra` writes.
pub fn spectra_files() -> Vec<String> {
    let mut files = vec![SPECTRA_JSON.to_string(), SPECTRA_CSV.to_string()];
    for kind in MatrixKind::ALL {
        files.extend([magnitude_file(kind), complex_file(kind)]);
    }
    files
}

/// Every file `write_sensitivity` writes.
pub fn sensitivity_files() -> Vec<String> {
    [SENSITIVITY_JSON, SENSITIVITY_HTML, SENSITIVITY_HEATMAP]
        .map(String::from)
        .to_vec()
}

/// What the files say about where the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub checkpoint: String,
    /// `neural-ode`, `llama-ode`, `gpt2`, with ` (re-discretised)` for a converted model.
    pub model: String,
    pub d_model: usize,
    pub n_heads: usize,
    /// The product the MLP's spectra are of (`W_fc W_proj` or `W_up W_down`).
    pub mlp_matrix: String,
}

#[derive(Serialize)]
struct SpectraFile<'a> {
    #[serde(flatten)]
    source: &'a Source,
    head_dim: usize,
    axis: Axis,
    points: Vec<PointRecord>,
}

#[derive(Serialize)]
struct PointRecord {
    t: f64,
    summary: BTreeMap<&'static str, Summary>,
    spectra: Vec<SpectrumRecord>,
}

#[derive(Serialize)]
struct SpectrumRecord {
    matrix: MatrixKind,
    head: Option<usize>,
    /// [re, im], largest magnitude first
    eigenvalues: Vec<[f64; 2]>,
}

/// Writes the spectra's JSON, CSV and six plots into `dir`; returns the paths written.
pub fn write_spectra(
    dir: &Path,
    source: &Source,
    axis: Axis,
    points: &[SpectraAt],
) -> Result<Vec<PathBuf>> {
    let file = SpectraFile {
        source,
        head_dim: source.d_model / source.n_heads.max(1),
        axis,
        points: points.iter().map(point_record).collect(),
    };
    let mut written = vec![write_json(dir, SPECTRA_JSON, &file)?];
    written.push(write_text(dir, SPECTRA_CSV, &spectra_csv(points))?);
    for kind in MatrixKind::ALL {
        let formula = match kind {
            MatrixKind::Mlp => source.mlp_matrix.as_str(),
            _ => kind.formula(),
        };
        let title = format!("|eigenvalues| of {formula} against {}", axis.label());
        let path = dir.join(magnitude_file(kind));
        plots::plot_magnitudes(&path, &title, axis.label(), &magnitude_panels(points, kind))
            .map_err(plot_error)?;
        written.push(path);
        let title = format!("eigenvalues of {formula}, coloured by {}", axis.label());
        let path = dir.join(complex_file(kind));
        let ts = points.iter().map(|p| p.t);
        let range = ts.clone().fold(f64::INFINITY, f64::min)..ts.fold(f64::NEG_INFINITY, f64::max);
        let panels = scatter_panels(points, kind);
        plots::plot_complex(&path, &title, range, &panels).map_err(plot_error)?;
        written.push(path);
    }
    Ok(written)
}

fn point_record(p: &SpectraAt) -> PointRecord {
    let summary = MatrixKind::ALL
        .iter()
        .map(|&k| (k.name(), p.summary(k)))
        .collect();
    let spectra = p
        .spectra
        .iter()
        .map(|s| SpectrumRecord {
            matrix: s.kind,
            head: s.head,
            eigenvalues: s.eigenvalues.iter().map(|z| [z.re, z.im]).collect(),
        })
        .collect();
    PointRecord {
        t: p.t,
        summary,
        spectra,
    }
}

/// One row per eigenvalue: `t,matrix,head,rank,re,im,abs` (head empty for the MLP).
fn spectra_csv(points: &[SpectraAt]) -> String {
    let mut csv = String::from("t,matrix,head,rank,re,im,abs\n");
    for p in points {
        for s in &p.spectra {
            let head = s.head.map(|h| h.to_string()).unwrap_or_default();
            for (r, z) in s.eigenvalues.iter().enumerate() {
                let (t, kind, abs) = (p.t, s.kind.name(), z.norm());
                let _ = writeln!(csv, "{t},{kind},{head},{r},{:e},{:e},{abs:e}", z.re, z.im);
            }
        }
    }
    csv
}

/// The heads of `kind` in order (one panel for the MLP).
fn heads(points: &[SpectraAt], kind: MatrixKind) -> Vec<Option<usize>> {
    let first = points.first().map_or(&[][..], |p| &p.spectra[..]);
    first
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.head)
        .collect()
}

fn panel_title(kind: MatrixKind, head: Option<usize>) -> String {
    match head {
        Some(h) => format!("head {h}"),
        None => kind.name().to_uppercase(),
    }
}

fn magnitude_panels(points: &[SpectraAt], kind: MatrixKind) -> Vec<MagnitudePanel> {
    heads(points, kind)
        .into_iter()
        .map(|head| {
            let of_head = |p: &SpectraAt| {
                let s = p.spectra.iter().find(|s| s.kind == kind && s.head == head);
                s.map(|s| s.eigenvalues.clone()).unwrap_or_default()
            };
            let n = points.first().map_or(0, |p| of_head(p).len());
            let lines = (0..n)
                .map(|r| {
                    let at = |p: &SpectraAt| of_head(p).get(r).map(|z| (p.t, z.norm()));
                    points.iter().filter_map(at).collect()
                })
                .collect();
            MagnitudePanel {
                title: panel_title(kind, head),
                lines,
            }
        })
        .collect()
}

fn scatter_panels(points: &[SpectraAt], kind: MatrixKind) -> Vec<ScatterPanel> {
    heads(points, kind)
        .into_iter()
        .map(|head| {
            let dots = points.iter().flat_map(|p| {
                let s = p
                    .spectra
                    .iter()
                    .filter(|s| s.kind == kind && s.head == head);
                s.flat_map(|s| s.eigenvalues.iter().map(|z| (z.re, z.im, p.t)))
            });
            ScatterPanel {
                title: panel_title(kind, head),
                points: dots.collect(),
            }
        })
        .collect()
}

/// A prompt and how the model continues it, as the sensitivity files describe it.
#[derive(Clone, Debug, Serialize)]
pub struct Prompt {
    pub text: String,
    pub tokens: Vec<u32>,
    /// How each token reads (its decoded text).
    pub pieces: Vec<String>,
    /// The solver and steps of the trajectory.
    pub solver: String,
    pub steps: usize,
    /// The model's most likely next token after the output position.
    pub prediction: Option<Prediction>,
}

/// A next token and the probability the model gives it.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub token: u32,
    pub text: String,
    pub probability: f64,
}

#[derive(Serialize)]
struct SensitivityFile<'a> {
    #[serde(flatten)]
    source: &'a Source,
    prompt: &'a Prompt,
    output: usize,
    stage_times: &'a [f64],
    per_token: Vec<TokenRecord<'a>>,
}

#[derive(Serialize)]
struct TokenRecord<'a> {
    position: usize,
    token: u32,
    text: &'a str,
    max_exponent: f64,
    kaplan_yorke: f64,
    /// largest first
    exponents: &'a [f64],
}

/// Writes the sensitivity's JSON, HTML page and heat map into `dir`; returns the paths written.
pub fn write_sensitivity(
    dir: &Path,
    source: &Source,
    prompt: &Prompt,
    s: &Sensitivity,
) -> Result<Vec<PathBuf>> {
    let per_token = (0..=s.output)
        .map(|k| TokenRecord {
            position: k,
            token: prompt.tokens[k],
            text: &prompt.pieces[k],
            max_exponent: s.exponents[k][0],
            kaplan_yorke: s.kaplan_yorke[k],
            exponents: &s.exponents[k],
        })
        .collect();
    let file = SensitivityFile {
        source,
        prompt,
        output: s.output,
        stage_times: &s.stage_times,
        per_token,
    };
    let mut written = vec![write_json(dir, SENSITIVITY_JSON, &file)?];
    written.push(write_text(
        dir,
        SENSITIVITY_HTML,
        &html_page(source, prompt, s),
    )?);
    let path = dir.join(SENSITIVITY_HEATMAP);
    let title = format!(
        "Lyapunov exponents of dF_{0}/dX_k, the output token {0} against each source token k",
        s.output
    );
    let labels: Vec<String> = prompt.pieces.iter().map(|p| visible(p)).collect();
    let limit = colour_limit(s, |e| e.to_vec());
    plots::plot_heatmap(&path, &title, &s.exponents, &labels[..=s.output], limit)
        .map_err(plot_error)?;
    written.push(path);
    Ok(written)
}

/// The colour scale's limit: the largest |exponent| that `pick` takes from any source token
/// but the output token itself. Its own exponents (the direct path, dF_j/dX_j) are usually
/// several times the others' and would wash every other token out; it gets the end colour.
fn colour_limit(s: &Sensitivity, pick: impl Fn(&[f64]) -> Vec<f64>) -> f64 {
    let others = if s.output > 0 {
        &s.exponents[..s.output]
    } else {
        &s.exponents[..]
    };
    let limit = others
        .iter()
        .flat_map(|e| pick(e))
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    if limit > 0.0 {
        limit
    } else {
        1.0
    }
}

/// A token's text with its whitespace made visible, for axis labels.
fn visible(piece: &str) -> String {
    piece.replace('\n', "\\n").replace(' ', "·")
}

/// The HTML page: the prompt with each token's background the colour of its largest exponent
/// (the heat map's scale), its numbers in a tooltip and in a table below.
fn html_page(source: &Source, prompt: &Prompt, s: &Sensitivity) -> String {
    let max = s.max_exponents();
    let limit = colour_limit(s, |e| vec![e[0]]);
    let colour = |x: f64| {
        let c = plots::exponent_colour(x, limit);
        format!("rgb({},{},{})", c.0, c.1, c.2)
    };
    let mut spans = String::new();
    for (k, &lambda) in max.iter().enumerate() {
        let piece = &prompt.pieces[k];
        let shown = escape(piece).replace('\n', "↵\n");
        let class = if k == s.output { " class=\"out\"" } else { "" };
        let tip = format!(
            "#{k} {}: max exponent {lambda:.4}, Kaplan-Yorke {:.2}",
            escape(&visible(piece)),
            s.kaplan_yorke[k]
        );
        let _ = write!(
            spans,
            "<span{class} style=\"background:{}\" title=\"{tip}\">{shown}</span>",
            colour(lambda)
        );
    }
    let mut rows = String::new();
    for (k, &lambda) in max.iter().enumerate() {
        let _ = writeln!(
            rows,
            "<tr><td>{k}</td><td><code>{}</code></td><td>{}</td>\
             <td style=\"background:{}\">{lambda:.4}</td><td>{:.2}</td></tr>",
            escape(&visible(&prompt.pieces[k])),
            prompt.tokens[k],
            colour(lambda),
            s.kaplan_yorke[k]
        );
    }
    let prediction = match &prompt.prediction {
        Some(p) => format!(
            "; the model's next token after it: <code>{}</code> (id {}, p = {:.3})",
            escape(&visible(&p.text)),
            p.token,
            p.probability
        ),
        None => String::new(),
    };
    let legend: String = (0..=20)
        .map(|i| {
            let x = limit * (i as f64 / 10.0 - 1.0);
            format!(
                "<span style=\"background:{}\">&nbsp;&nbsp;</span>",
                colour(x)
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>token sensitivity: {checkpoint}</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body>\n<h1>Token sensitivity</h1>\n\
         <p>{model} from <code>{checkpoint}</code>, {solver} in {steps} steps. Each token is \
         coloured by the largest Lyapunov exponent of dF<sub>j</sub>/dX<sub>k</sub>, the \
         output token j = {j} (outlined) against that source token k{prediction}.</p>\n\
         <p class=\"prompt\">{spans}</p>\n\
         <p>{neg:.3} {legend} {pos:.3} (a square-root scale: blue contracts, red expands; it \
         ends at the largest of the other tokens, so the output token's own may lie beyond \
         it)</p>\n\
         <table>\n<tr><th>k</th><th>token</th><th>id</th><th>max exponent</th>\
         <th>Kaplan-Yorke</th></tr>\n{rows}</table>\n</body>\n</html>\n",
        checkpoint = escape(&source.checkpoint),
        model = escape(&source.model),
        solver = escape(&prompt.solver),
        steps = prompt.steps,
        j = s.output,
        neg = -limit,
        pos = limit,
    )
}

const STYLE: &str = "body { font-family: sans-serif; max-width: 60em; margin: 2em auto; }\n\
    .prompt { font-family: monospace; font-size: 1.4em; white-space: pre-wrap; \
    line-height: 1.9; }\n\
    .prompt span { padding: 0.15em 0.05em; }\n\
    .out { outline: 2px solid black; }\n\
    table { border-collapse: collapse; }\n\
    td, th { padding: 0.1em 0.8em; text-align: right; }\n";

/// `s` with the five characters HTML gives a meaning escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Analysis {
        msg: format!("cannot write {name}: {e}"),
    })? + "\n";
    write_text(dir, name, &text)
}

fn write_text(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    write_atomically(&path, text.as_bytes()).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn plot_error(e: crate::plot::PlotError) -> Error {
    Error::Analysis { msg: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_must() {
        assert_eq!(escape("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
        assert_eq!(visible("a b\n"), "a·b\\n");
    }
}
