//! `sample`: continue a prompt with a checkpoint, the text streamed out token by token.
//!
//! ```text
//! cargo run --release --bin sample -- --prompt "ROMEO:"          # after a default train run
//! cargo run --release --bin sample -- --checkpoint runs/gpt2/checkpoint.safetensors \
//!     --prompt-file prompt.txt --temperature 0.8 --top-p 0.9 --max-new-tokens 500
//! echo "JULIET:" | cargo run --release --bin sample -- --steps 8 --solver rk4
//! ```
//!
//! The prompt comes from --prompt, --prompt-file, or stdin when neither is given and stdin is
//! not a terminal. It is echoed, then the new text follows as it is generated (only whole
//! UTF-8 characters: a byte model's character can take several tokens). Generation ends after
//! --max-new-tokens or at the end-of-text token. One line of figures goes to stderr at the end:
//!
//! ```text
//! sample | 500 tokens in 7.9 s | 63.2 tok/s | cache on | neural-ode | steps 4 | euler |
//!     prompt 6 tokens | max tokens reached        (one line)
//! ```
//!
//! The time counts everything after loading: the prefill of the prompt and every token.
//! Bad input (a missing or corrupt checkpoint, an empty or over-long prompt, --steps on a model
//! of fixed depth, a tokeniser that does not fit the model) prints one `error:` line and exits
//! with code 1.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use odeflow_data::Tokenizer;
use odeflow_model::sample::{Decoding, Generation, SampleOptions, TextStream};
use odeflow_model::{checkpoint, train, Forward, Model, Solver};
use odeflow_runtime::Device;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Where `train` writes its checkpoint when run without flags.
const DEFAULT_CHECKPOINT: &str = "runs/neural-ode/checkpoint.safetensors";

/// Continue a prompt with a trained model, streaming the text to stdout.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A checkpoint written by odeflow (.safetensors) [default: the default train run's].
    #[arg(long, default_value = DEFAULT_CHECKPOINT)]
    checkpoint: PathBuf,

    /// The text to continue.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,

    /// A UTF-8 file holding the text to continue.
    #[arg(long)]
    prompt_file: Option<PathBuf>,

    /// Tokeniser: `byte` or `gpt2` [default: gpt2 for a model whose vocabulary holds GPT-2's
    /// 50257 tokens, else byte].
    #[arg(long)]
    tokenizer: Option<Tokenizer>,

    /// Divides the logits before the softmax; 0 is greedy (always the likeliest token).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,

    /// Draw only among the k likeliest tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,

    /// Draw only among the fewest likeliest tokens whose probabilities sum to p (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,

    /// The most tokens to generate.
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,

    /// Seeds the draws: the same seed, checkpoint and prompt give the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,

    /// Solver steps of an ODE model [default: the config's n_steps]; a gpt2 or re-discretised
    /// model has a fixed depth.
    #[arg(long)]
    steps: Option<usize>,

    /// The ODE solver: euler, midpoint, heun or rk4 [default: the one the checkpoint trained
    /// with, else euler]. A gpt2 or re-discretised model runs Euler only.
    #[arg(long)]
    solver: Option<Solver>,

    /// A prompt longer than the model's context: keep its last seq_len tokens instead of
    /// refusing it.
    #[arg(long)]
    keep_tail: bool,

    /// Rerun the whole forward pass for every token instead of using the KV cache (the
    /// reference: the same tokens, slower).
    #[arg(long)]
    no_cache: bool,

    /// Keep generating past the end-of-text token.
    #[arg(long)]
    ignore_eot: bool,

    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
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
    if let Device::Cuda(i) = args.device {
        // open the device before anything else, so a machine without one fails at once
        odeflow_runtime::cuda::gpu(i)?;
    }
    let loaded = checkpoint::load(&args.checkpoint)?;
    let trained_with = train::trained_solver(&args.checkpoint, &loaded.metadata);
    let model = loaded.model;
    let v = model.config().vocab_size;
    let tokenizer = args.tokenizer.unwrap_or(Tokenizer::for_vocab_size(v));
    if (tokenizer.vocab_size() as usize) > v {
        let msg = format!(
            "the model's vocabulary ({v} tokens) is smaller than the {tokenizer} tokeniser's \
             ({}): pick the tokeniser it was trained with (--tokenizer)",
            tokenizer.vocab_size()
        );
        return Err(msg.into());
    }
    let prompt = tokenizer.encode(&read_prompt(args)?)?;
    model.to_device(args.device)?;
    let fwd = Forward {
        steps: args.steps,
        solver: args.solver.or(trained_with).unwrap_or_default(),
        ..Forward::eval()
    };
    let opts = SampleOptions {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
        stop_token: (!args.ignore_eot).then(|| tokenizer.eot_token()),
        keep_tail: args.keep_tail,
        decoding: if args.no_cache {
            Decoding::Recompute
        } else {
            Decoding::Cached
        },
    };
    let started = Instant::now();
    let mut generation = Generation::new(&model, &fwd, &prompt, &opts)?;
    let read_whole = stream(&mut generation, tokenizer)?;
    let seconds = started.elapsed().as_secs_f64();
    print_stats(&generation, &model, &fwd, args, seconds, read_whole);
    Ok(())
}

/// The prompt text of --prompt, --prompt-file or stdin, refused when empty.
fn read_prompt(args: &Args) -> Result<String> {
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => fs::read_to_string(path).map_err(|e| {
            let hint = "check the path; the file must be UTF-8 text";
            format!(
                "could not read --prompt-file {}: {e}; {hint}",
                path.display()
            )
        })?,
        (None, None) if !io::stdin().is_terminal() => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("could not read the prompt from stdin: {e}"))?;
            text
        }
        (None, None) => {
            return Err(
                "no prompt: give --prompt TEXT or --prompt-file PATH, or pipe the \
                        text into stdin"
                    .into(),
            )
        }
    };
    if text.is_empty() {
        return Err("the prompt is empty: give at least one character to continue".into());
    }
    Ok(text)
}

/// Echoes the prompt, then prints each new token's text as it comes. A closed stdout (the
/// output piped into `head`) ends generation quietly: the result is then false.
fn stream(generation: &mut Generation, tokenizer: Tokenizer) -> Result<bool> {
    let mut text = TextStream::new(tokenizer);
    let mut out = io::stdout().lock();
    let mut echo = String::new();
    for &token in generation.prompt() {
        echo.push_str(&text.push(token)?);
    }
    if !write_flushed(&mut out, &echo)? {
        return Ok(false);
    }
    while let Some(token) = generation.next_token()? {
        if !write_flushed(&mut out, &text.push(token)?)? {
            return Ok(false);
        }
    }
    write_flushed(&mut out, &(text.finish() + "\n"))
}

/// Writes and flushes `s`; false if the reader has gone away.
fn write_flushed(out: &mut impl Write, s: &str) -> Result<bool> {
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(format!("could not write to stdout: {e}").into()),
    }
}

/// The line of figures on stderr (see the module doc).
fn print_stats(
    generation: &Generation,
    model: &Model,
    fwd: &Forward,
    args: &Args,
    seconds: f64,
    read_whole: bool,
) {
    let cfg = model.config();
    let kind = if cfg.discrete {
        format!("{} (re-discretised)", cfg.model.name())
    } else {
        cfg.model.name().to_string()
    };
    let n = generation.generated().len();
    let cache = if args.no_cache { "off" } else { "on" };
    let steps = fwd.steps.unwrap_or(cfg.n_steps);
    let end = match (read_whole, generation.stopped()) {
        (false, _) => "stdout closed",
        (true, true) => "stopped at end-of-text",
        (true, false) => "max tokens reached",
    };
    eprintln!(
        "sample | {n} tokens in {seconds:.1} s | {:.1} tok/s | cache {cache} | {kind} | \
         steps {steps} | {} | prompt {} tokens | {end}",
        n as f64 / seconds.max(1e-9),
        fwd.solver,
        generation.prompt().len()
    );
}
