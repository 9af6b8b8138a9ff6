//! `analyze`: the dynamics of a checkpoint (MODEL.md section 11): the spectra of its attention
//! and MLP matrices against t, and the Lyapunov exponents of its output token against each
//! token of a prompt.
//!
//! ```text
//! cargo run --release --bin analyze -- --checkpoint runs/neural-ode/checkpoint.safetensors
//! cargo run --release --bin analyze -- --checkpoint .. --grid 40          # spectra at t = i/40
//! cargo run --release --bin analyze -- --checkpoint .. --prompt "To be, or not to be"
//! ```
//!
//! Spectra: at every time the forward solve evaluates the field (the checkpoint's solver and
//! step count unless --solver and --steps say otherwise), or at --times / --grid (the weights
//! are functions of t); per layer for a vanilla GPT-2 or a re-discretised model. Sensitivity:
//! the prompt's trajectory on the same grid, the Jacobian of the last prompt token's field with
//! respect to every token, and each token's Lyapunov exponents. The files (listed in
//! `odeflow_model::analysis::report`) go to --out-dir, `analysis/` beside the checkpoint by
//! default; `docs/10-analysis.md` reads them.
//!
//! Prints a line per point of the spectra and per solver step of the sensitivity, above a
//! progress bar when stderr is a terminal, then the most sensitive tokens and the files written.
//! Bad input prints one `error:` line and exits with code 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use odeflow_autodiff::Tape;
use odeflow_data::Tokenizer;
use odeflow_model::analysis::report::{self, Prediction, Prompt, Source};
use odeflow_model::analysis::spectra::{self, MatrixKind, Points, SpectraAt};
use odeflow_model::analysis::{token_sensitivity, Axis, Dynamics, Options, Sensitivity};
use odeflow_model::{checkpoint, train, Forward, Model, ModelKind, Solver};
use odeflow_runtime::Tensor;

const BAR_TEMPLATE: &str = "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg}";
/// A line of the play the default run trains on (Romeo and Juliet, act 2, scene 2).
const DEFAULT_PROMPT: &str = "But soft! what light through yonder window breaks?";
/// The source tokens the closing line names, most sensitive first.
const TOP_TOKENS: usize = 5;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Analyse a checkpoint's dynamics: eigenvalue spectra against t, and token sensitivity by
/// Lyapunov exponents.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A checkpoint written by odeflow (.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,

    /// Where the files go [default: analysis/ beside the checkpoint].
    #[arg(long)]
    out_dir: Option<PathBuf>,

    /// The ODE solver of the trajectory and of the spectra's grid: euler, midpoint, heun or rk4
    /// [default: the one the checkpoint trained with, else euler].
    #[arg(long)]
    solver: Option<Solver>,

    /// Solver steps [default: the config's n_steps]; a gpt2 or re-discretised model has a fixed
    /// depth.
    #[arg(long)]
    steps: Option<usize>,

    /// Spectra at these times instead of the solver's grid, comma-separated (ODE models).
    #[arg(long, value_delimiter = ',', conflicts_with = "grid")]
    times: Option<Vec<f64>>,

    /// Spectra at t = 1/N, 2/N, .., 1 instead of the solver's grid (ODE models).
    #[arg(long)]
    grid: Option<usize>,

    /// The prompt of the sensitivity analysis; its last token is the output position
    /// [default: "But soft! what light through yonder window breaks?", its last seq_len tokens
    /// for a model of a shorter context].
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,

    /// Read the prompt from this UTF-8 file instead.
    #[arg(long)]
    prompt_file: Option<PathBuf>,

    /// Tokeniser of the prompt: `byte` or `gpt2` [default: gpt2 for a model whose vocabulary
    /// holds GPT-2's 50257 tokens, else byte].
    #[arg(long)]
    tokenizer: Option<Tokenizer>,

    /// Lyapunov exponents per token [default: all D]. Fewer track the first m coordinate
    /// directions, which settle on the largest exponents only over long flows.
    #[arg(long)]
    exponents: Option<usize>,

    /// Jacobian rows per backward pass (memory: this many copies of the prompt's activations).
    #[arg(long, default_value_t = 32)]
    jacobian_batch: usize,

    /// Run only one half of the analysis.
    #[arg(long)]
    only: Option<Part>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Spectra,
    Sensitivity,
}

fn main() -> ExitCode {
    odeflow_runtime::cpu::join_thread_pool();
    odeflow_runtime::memory::keep_freed_memory();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let loaded = checkpoint::load(&args.checkpoint)?;
    let trained_with = train::run_state(&args.checkpoint, &loaded.metadata)
        .ok()
        .map(|state| state.options.solver);
    let model = loaded.model;
    let cfg = model.config().clone();
    let solver = args.solver.or(trained_with).unwrap_or_default();
    let steps = args.steps.unwrap_or(cfg.n_steps);
    model.check_forward(&Forward {
        steps: Some(steps),
        solver,
        ..Forward::eval()
    })?;
    let points = points(args, solver, steps)?;
    spectra::check_points(&model, &points)?;
    let out_dir = args.out_dir.clone().unwrap_or_else(|| {
        let dir = args.checkpoint.parent().unwrap_or(Path::new("."));
        dir.join("analysis")
    });
    let source = source(args, &model);
    // everything that can be refused is checked before a file is written
    let prompt = match args.only {
        Some(Part::Spectra) => None,
        _ => Some(prompt(args, &model, solver, steps)?),
    };
    let exponents = args.exponents.unwrap_or(cfg.d_model);
    if exponents == 0 || exponents > cfg.d_model || args.jacobian_batch == 0 {
        let msg = format!(
            "--exponents {exponents} is not in 1..={} (D), or --jacobian-batch is 0",
            cfg.d_model
        );
        return Err(msg.into());
    }
    println!(
        "analyze | {} | {} | D {} | H {} | {solver} in {steps} steps | out {}",
        source.checkpoint,
        source.model,
        cfg.d_model,
        cfg.n_heads,
        out_dir.display()
    );
    let started = Instant::now();
    let spectra = match args.only {
        Some(Part::Sensitivity) => None,
        _ => Some(compute_spectra(&model, &points)?),
    };
    fs::create_dir_all(&out_dir).map_err(|e| {
        let hint = "give a writable --out-dir";
        format!("could not create {}: {e}; {hint}", out_dir.display())
    })?;
    let mut written = Vec::new();
    if let Some((axis, spectra)) = spectra {
        written.extend(report::write_spectra(&out_dir, &source, axis, &spectra)?);
    }
    if let Some(prompt) = prompt {
        let opts = Options {
            output: prompt.tokens.len() - 1,
            exponents,
            jacobian_batch: args.jacobian_batch,
        };
        written.extend(run_sensitivity(&model, prompt, &opts, &source, &out_dir)?);
    }
    println!(
        "wrote {} files to {} in {:.1} s",
        written.len(),
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where the spectra are taken: --times, --grid, or the solver's grid.
fn points(args: &Args, solver: Solver, steps: usize) -> Result<Points> {
    Ok(match (&args.times, args.grid) {
        (Some(ts), _) => Points::Times(ts.clone()),
        (None, Some(0)) => return Err("--grid must be at least 1".into()),
        (None, Some(n)) => Points::Times((1..=n).map(|i| i as f64 / n as f64).collect()),
        (None, None) => Points::SolverGrid { solver, steps },
    })
}

fn source(args: &Args, model: &Model) -> Source {
    let cfg = model.config();
    let mut name = cfg.model.name().to_string();
    if cfg.discrete {
        name.push_str(" (re-discretised)");
    }
    let mlp = match cfg.model {
        ModelKind::LlamaOde => "W_up W_down",
        _ => "W_fc W_proj",
    };
    Source {
        checkpoint: args.checkpoint.display().to_string(),
        model: name,
        d_model: cfg.d_model,
        n_heads: cfg.n_heads,
        mlp_matrix: mlp.into(),
    }
}

/// The spectra at every point, a line each.
fn compute_spectra(model: &Model, points: &Points) -> Result<(Axis, Vec<SpectraAt>)> {
    let bar = progress_bar("points");
    let mut tick = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let (axis, spectra) = spectra::model_spectra(model, points, &mut tick)?;
    bar.finish_and_clear();
    for (i, at) in spectra.iter().enumerate() {
        println!("{}", spectra_line(i, spectra.len(), axis, at));
    }
    Ok((axis, spectra))
}

/// One line per point:
///
/// ```text
/// spectra 2/4 | t 0.5000 | qk max|λ| 1.234 mean 0.456 | ov max|λ| 0.321 Re>0 62% |
///     mlp max|λ| 2.345 Re>0 48%      (one line)
/// ```
fn spectra_line(i: usize, n: usize, axis: Axis, at: &SpectraAt) -> String {
    let (qk, ov, mlp) = (
        at.summary(MatrixKind::Qk),
        at.summary(MatrixKind::Ov),
        at.summary(MatrixKind::Mlp),
    );
    let point = match axis {
        Axis::Time => format!("t {:.4}", at.t),
        Axis::Layer => format!("layer {}", at.t),
    };
    format!(
        "spectra {}/{n} | {point} | qk max|λ| {:.3} mean {:.3} | ov max|λ| {:.3} Re>0 {:.0}% | \
         mlp max|λ| {:.3} Re>0 {:.0}%",
        i + 1,
        qk.max_abs,
        qk.mean_abs,
        ov.max_abs,
        100.0 * ov.positive_real,
        mlp.max_abs,
        100.0 * mlp.positive_real
    )
}

/// The prompt's tokens, how each reads, and the model's next token after it.
fn prompt(args: &Args, model: &Model, solver: Solver, steps: usize) -> Result<Prompt> {
    let text = match &args.prompt_file {
        Some(path) => fs::read_to_string(path).map_err(|e| {
            let hint = "check the path; the file must be UTF-8 text";
            format!("could not read {}: {e}; {hint}", path.display())
        })?,
        None => args.prompt.clone().unwrap_or(DEFAULT_PROMPT.into()),
    };
    let v = model.config().vocab_size;
    let tokenizer = args.tokenizer.unwrap_or(default_tokenizer(v));
    let mut tokens = tokenizer.encode(&text)?;
    let context = model.config().seq_len;
    let given = args.prompt.is_some() || args.prompt_file.is_some();
    if !given && tokens.len() > context {
        tokens.drain(..tokens.len() - context);
    }
    if tokens.is_empty() || tokens.len() > context {
        let msg = format!(
            "the prompt is {} {tokenizer} tokens long; the model takes 1 to {context}: give a \
             shorter --prompt",
            tokens.len()
        );
        return Err(msg.into());
    }
    if let Some(&bad) = tokens.iter().find(|&&tok| tok as usize >= v) {
        let msg = format!(
            "the {tokenizer} tokeniser gives token {bad}, but the model's vocabulary has {v} \
             tokens: pick the tokeniser it was trained with (--tokenizer)"
        );
        return Err(msg.into());
    }
    let pieces = tokens
        .iter()
        .map(|&t| tokenizer.decode(&[t]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fwd = Forward {
        steps: Some(steps),
        solver,
        ..Forward::eval()
    };
    let (id, p) = next_token(model, &tokens, &fwd)?;
    Ok(Prompt {
        // the text of the tokens analysed (the default prompt may have lost its start)
        text: tokenizer.decode(&tokens)?,
        pieces,
        solver: solver.to_string(),
        steps,
        prediction: Some(Prediction {
            token: id,
            text: tokenizer.decode(&[id])?,
            probability: p,
        }),
        tokens,
    })
}

/// The most likely token after `tokens`, and its probability.
fn next_token(model: &Model, tokens: &[u32], fwd: &Forward) -> Result<(u32, f64)> {
    let tape = Tape::new();
    let ids = Tensor::from_vec(tokens.to_vec(), &[1, tokens.len()])?;
    let logits = tape.no_grad(|| model.forward(&tape, &ids, fwd))?;
    let v = model.config().vocab_size;
    let all = logits.value().to_f32_vec()?;
    let last = &all[(tokens.len() - 1) * v..];
    let (best, &top) = last
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("V >= 1");
    // softmax(top) = 1 / sum_i exp(l_i - top)
    let z: f64 = last.iter().map(|&l| ((l - top) as f64).exp()).sum();
    Ok((best as u32, 1.0 / z))
}

fn run_sensitivity(
    model: &Model,
    prompt: Prompt,
    opts: &Options,
    source: &Source,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let solver: Solver = prompt.solver.parse()?;
    let dynamics = Dynamics::of_model(model, &prompt.tokens, solver, prompt.steps)?;
    println!(
        "sensitivity | {} tokens | output token {} {:?} | {} exponents per token | {} Jacobian \
         rows per pass",
        prompt.tokens.len(),
        opts.output,
        prompt.pieces[opts.output],
        opts.exponents,
        opts.jacobian_batch
    );
    let bar = progress_bar("steps");
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut last = Instant::now();
    let mut tick = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        let t = done as f64 / total as f64;
        let ms = last.elapsed().as_secs_f64() * 1e3;
        say(format!("step {done}/{total} | t {t:.4} | {ms:.0} ms"));
        last = Instant::now();
    };
    let s = token_sensitivity(&dynamics, opts, &mut tick)?;
    bar.finish_and_clear();
    println!("{}", top_tokens_line(&prompt, &s));
    Ok(report::write_sensitivity(out_dir, source, &prompt, &s)?)
}

/// `most sensitive: #12 "l" 1.234 (D_KY 10.2), ...`
fn top_tokens_line(prompt: &Prompt, s: &Sensitivity) -> String {
    let max = s.max_exponents();
    let mut order: Vec<usize> = (0..max.len()).collect();
    order.sort_by(|&a, &b| max[b].total_cmp(&max[a]));
    let each: Vec<String> = order
        .iter()
        .take(TOP_TOKENS)
        .map(|&k| {
            format!(
                "#{k} {:?} {:.3} (D_KY {:.1})",
                prompt.pieces[k], max[k], s.kaplan_yorke[k]
            )
        })
        .collect();
    format!("most sensitive: {}", each.join(", "))
}

/// gpt2 for a model that can hold GPT-2's tokens, byte otherwise.
fn default_tokenizer(v: usize) -> Tokenizer {
    if v >= Tokenizer::Gpt2.vocab_size() as usize {
        Tokenizer::Gpt2
    } else {
        Tokenizer::Byte
    }
}

/// A bar indicatif draws only when stderr is a terminal.
fn progress_bar(unit: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(BAR_TEMPLATE).expect("BAR_TEMPLATE is valid");
    let bar = ProgressBar::new(0).with_style(style.progress_chars("=> "));
    bar.set_message(unit.to_string());
    bar
}
