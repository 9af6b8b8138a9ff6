//! `eval`: the mean next-token loss of a checkpoint on held-out tokens, and its perplexity.
//!
//! ```text
//! cargo run --release -p odeflow-model --bin eval -- \
//!     --checkpoint runs/tiny.safetensors --shard data/shards/byte/val_000000.bin
//! ```
//!
//! The tokens are cut into windows of T + 1 starting at 0, T, 2T, ... (the windows of the
//! validation loader: consecutive windows share one token), B windows to a batch and the last
//! batch possibly smaller, so every window counts once whatever B is. The loss is the mean over
//! every predicted token, and perplexity = exp(loss) (MODEL.md section 9).
//!
//! Prints one line at the end, and shows a progress bar in between when stderr is a terminal;
//! with --json it also writes the numbers as one JSON object. Bad input prints one `error:` line
//! and exits with code 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{ArgGroup, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use odeflow_autodiff::Tape;
use odeflow_data::shard::peek_header;
use odeflow_data::{Shard, Tokenizer};
use odeflow_model::{checkpoint, train, Forward, Model, Solver};
use odeflow_runtime::Tensor;
use serde::Serialize;

const BAR_TEMPLATE: &str =
    "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} batches ({per_sec}) {msg}";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Evaluate a checkpoint: mean next-token loss and perplexity over a shard or a text file.
#[derive(Parser, Debug)]
#[command(version, group(ArgGroup::new("data").required(true).args(["shard", "text"])))]
struct Args {
    /// A checkpoint written by odeflow (.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,

    /// A token shard made by `prepare` (llm.c's .bin format).
    #[arg(long)]
    shard: Option<PathBuf>,

    /// A UTF-8 text file, tokenised with --tokenizer.
    #[arg(long)]
    text: Option<PathBuf>,

    /// Tokeniser of --text: `byte` or `gpt2` [default: gpt2 for a model whose vocabulary holds
    /// GPT-2's 50257 tokens, else byte].
    #[arg(long, requires = "text")]
    tokenizer: Option<Tokenizer>,

    /// Windows per batch (B).
    #[arg(long, default_value_t = 8)]
    batch: usize,

    /// Tokens per window (T) [default: the model's context, seq_len].
    #[arg(long)]
    seq_len: Option<usize>,

    /// Stop after this many batches [default: every window of the data].
    #[arg(long)]
    max_batches: Option<usize>,

    /// Solver steps of an ODE model [default: the config's n_steps]; a gpt2 or re-discretised
    /// model has a fixed depth. A list (`--steps 2,4,8,16`) evaluates at each depth in turn, with
    /// no training in between (the zero-shot depth change of MODEL.md section 10), and ends with
    /// a table of perplexity against the step count.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,

    /// The ODE solver: euler, midpoint, heun or rk4 [default: the one the checkpoint trained
    /// with, else euler]. A gpt2 or re-discretised model runs Euler only.
    #[arg(long)]
    solver: Option<Solver>,

    /// Also write the result here as a JSON object (an array of them for a list of --steps).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What `--json` writes.
#[derive(Serialize)]
struct Report {
    checkpoint: String,
    data: String,
    /// Predicted tokens the mean is over.
    tokens: usize,
    /// Mean next-token cross-entropy, in nats.
    loss: f64,
    perplexity: f64,
    /// Solver steps (or layers) of the forward pass.
    steps: usize,
    solver: Solver,
    /// Vector-field evaluations of one forward pass.
    nfe: usize,
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
    if args.batch == 0 || args.max_batches == Some(0) {
        return Err("--batch and --max-batches must be at least 1".into());
    }
    let loaded = checkpoint::load(&args.checkpoint)?;
    let trained_with = train::trained_solver(&args.checkpoint, &loaded.metadata);
    let model = loaded.model;
    let cfg = model.config();
    let t = args.seq_len.unwrap_or(cfg.seq_len);
    if t == 0 || t > cfg.seq_len {
        let msg = format!(
            "--seq-len {t} is not in 1..={}, the model's context: pick one in that range",
            cfg.seq_len
        );
        return Err(msg.into());
    }
    let (tokens, data) = read_tokens(args, cfg.vocab_size)?;
    if tokens.len() < t + 1 {
        let msg = format!(
            "{data} holds {} tokens, but one window needs --seq-len + 1 = {}: give more text or \
             a shorter --seq-len",
            tokens.len(),
            t + 1
        );
        return Err(msg.into());
    }
    let depths: Vec<Option<usize>> = match args.steps.is_empty() {
        true => vec![None],
        false => args.steps.iter().copied().map(Some).collect(),
    };
    let mut reports = Vec::with_capacity(depths.len());
    for steps in depths {
        let fwd = Forward {
            steps,
            solver: args.solver.or(trained_with).unwrap_or_default(),
            ..Forward::eval()
        };
        let started = Instant::now();
        let (loss, n_tokens) = mean_loss(&model, &tokens, t, args, &fwd)?;
        let report = Report {
            checkpoint: args.checkpoint.display().to_string(),
            data: data.clone(),
            tokens: n_tokens,
            loss,
            perplexity: loss.exp(),
            steps: steps.unwrap_or(cfg.n_steps),
            solver: fwd.solver,
            nfe: model.nfe(&fwd),
        };
        print_line(&report, &model, started.elapsed().as_secs_f64());
        reports.push(report);
    }
    if reports.len() > 1 {
        print_depth_table(&reports, cfg.n_steps);
    }
    if let Some(path) = &args.json {
        let json = match &reports[..] {
            [one] => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(all)?,
        } + "\n";
        fs::write(path, json).map_err(|e| format!("could not write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Perplexity against the step count, as a markdown table (the depth the model trained at
/// marked).
fn print_depth_table(reports: &[Report], trained: usize) {
    println!("| steps | solver | nfe | loss | perplexity |");
    println!("|---:|---|---:|---:|---:|");
    for r in reports {
        let mark = if r.steps == trained { " (trained)" } else { "" };
        println!(
            "| {}{mark} | {} | {} | {:.4} | {:.2} |",
            r.steps, r.solver, r.nfe, r.loss, r.perplexity
        );
    }
}

/// The tokens of --shard or --text, each checked to be below the model's vocabulary size `v`,
/// and a name for the data.
fn read_tokens(args: &Args, v: usize) -> Result<(Vec<u32>, String)> {
    match (&args.shard, &args.text) {
        (Some(path), _) => Ok((shard_tokens(path, v)?, path.display().to_string())),
        (None, Some(path)) => {
            let tokenizer = args.tokenizer.unwrap_or(Tokenizer::for_vocab_size(v));
            let tokens = text_tokens(path, tokenizer, v)?;
            Ok((tokens, path.display().to_string()))
        }
        (None, None) => unreachable!("clap requires --shard or --text"),
    }
}

/// Every token of a shard. A shard records the vocabulary it was made for: the model may have
/// more rows than that (a vocabulary padded for speed) but never fewer.
///
/// Shortfall: the whole shard is decoded into memory (4 bytes a token, 400 MB for a 100 M-token
/// shard); a val shard is much smaller, and streaming would cost a second code path.
fn shard_tokens(path: &Path, v: usize) -> Result<Vec<u32>> {
    let recorded = peek_header(path)?.vocab_size;
    if let Some(r) = recorded.filter(|&r| r as usize > v) {
        let msg = format!(
            "{} was prepared for a vocabulary of {r} tokens, but the model has {v}: evaluate it \
             with a model trained on that tokeniser, or prepare the text with the model's",
            path.display()
        );
        return Err(msg.into());
    }
    // opening checks every token against the recorded vocabulary, or the model's
    let vocab = recorded.unwrap_or(v as u32);
    Ok(Shard::open(path, vocab)?.to_vec())
}

/// The tokens of a text file: the end-of-text token, then the text, as `prepare` lays out each
/// document, so the first token is predicted from the context the model was trained with.
fn text_tokens(path: &Path, tokenizer: Tokenizer, v: usize) -> Result<Vec<u32>> {
    let text = fs::read_to_string(path).map_err(|e| {
        let hint = "check the path; the file must be UTF-8 text";
        format!("could not read {}: {e}; {hint}", path.display())
    })?;
    let mut tokens = vec![tokenizer.eot_token()];
    tokens.extend(tokenizer.encode(&text)?);
    if let Some(&bad) = tokens.iter().find(|&&tok| tok as usize >= v) {
        let msg = format!(
            "the {tokenizer} tokeniser gives token {bad}, but the model's vocabulary has {v} \
             tokens: pick the tokeniser it was trained with (--tokenizer)"
        );
        return Err(msg.into());
    }
    Ok(tokens)
}

/// The mean loss over the windows of `tokens` (see the module doc), and the number of
/// predicted tokens it averages.
fn mean_loss(
    model: &Model,
    tokens: &[u32],
    t: usize,
    args: &Args,
    fwd: &Forward,
) -> Result<(f64, usize)> {
    // windows start at 0, T, 2T, ... while start + T + 1 <= N: (N - 1) / T of them
    let windows = (tokens.len() - 1) / t;
    let starts: Vec<usize> = (0..windows).map(|w| w * t).collect();
    let batches: Vec<&[usize]> = starts.chunks(args.batch).collect();
    let n_batches = args.max_batches.unwrap_or(batches.len()).min(batches.len());
    let bar = progress_bar(n_batches as u64);
    // a sum of per-token losses in f64: the batch means, weighted by their token counts
    let (mut total, mut count) = (0.0f64, 0usize);
    for rows in &batches[..n_batches] {
        let (ids, targets) = batch_tensors(tokens, rows, t)?;
        let tape = Tape::new();
        let loss = tape.no_grad(|| model.loss(&tape, &ids, &targets, fwd))?;
        let n = rows.len() * t;
        total += loss.value().to_scalar()? as f64 * n as f64;
        count += n;
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", total / count as f64));
    }
    bar.finish_and_clear();
    Ok((total / count as f64, count))
}

/// Inputs and targets of the windows at `starts`.
///
/// Shapes: -> ids [b, T], targets [b, T] (u32), b = starts.len()
fn batch_tensors(tokens: &[u32], starts: &[usize], t: usize) -> Result<(Tensor, Tensor)> {
    let ids: Vec<u32> = starts
        .iter()
        .flat_map(|&s| &tokens[s..s + t])
        .copied()
        .collect();
    let targets: Vec<u32> = starts
        .iter()
        .flat_map(|&s| &tokens[s + 1..s + t + 1])
        .copied()
        .collect();
    let shape = [starts.len(), t];
    Ok((
        Tensor::from_vec(ids, &shape)?,
        Tensor::from_vec(targets, &shape)?,
    ))
}

/// A bar over the batches; indicatif draws it only when stderr is a terminal.
fn progress_bar(batches: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(BAR_TEMPLATE).expect("BAR_TEMPLATE is valid");
    ProgressBar::new(batches).with_style(style.progress_chars("=> "))
}

/// The one line of a run:
///
/// ```text
/// eval | runs/tiny.safetensors | neural-ode | steps 4 | euler | nfe 4 | 8192 tokens |
///     loss 1.4821 | perplexity 4.40 | 2.1 s      (one line)
/// ```
fn print_line(report: &Report, model: &Model, seconds: f64) {
    let cfg = model.config();
    let kind = if cfg.discrete {
        format!("{} (re-discretised)", cfg.model.name())
    } else {
        cfg.model.name().to_string()
    };
    let Report {
        checkpoint,
        tokens,
        loss,
        perplexity,
        steps,
        solver,
        nfe,
        ..
    } = report;
    println!(
        "eval | {checkpoint} | {kind} | steps {steps} | {solver} | nfe {nfe} | {tokens} tokens | \
         loss {loss:.4} | perplexity {perplexity:.2} | {seconds:.1} s"
    );
}
