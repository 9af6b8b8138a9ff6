//! `prepare`: text files or folders in, train/val token shards out.
//!
//! ```text
//! cargo run --release -p odeflow-data --bin prepare -- \
//!     data/corpus/shakespeare --out data/shards/byte --tokenizer byte
//! ```
//!
//! Prints one line before, one per shard written and one summary line; a progress bar (in
//! bytes of text) runs in between. The work is `odeflow_data::prepare`; this file only parses
//! arguments and reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use odeflow_data::prepare::{list_documents, DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION};
use odeflow_data::shard::peek_header;
use odeflow_data::{prepare, DataError, PrepareConfig, PrepareSummary, Tokenizer};

const BAR_TEMPLATE: &str =
    "{elapsed_precise} [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}) {msg}";

/// Tokenise text files into llm.c-compatible train/val shards.
///
/// Each file is one document; a folder contributes every .txt file under it in sorted order.
/// Every document is preceded by the end-of-text token, and the last --val-fraction of its
/// tokens go to the val split, the rest to train.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Text files or folders of .txt files (UTF-8, one document per file).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,

    /// Folder for the shards train_000000.bin, ..., val_000000.bin, ... (created if missing).
    #[arg(long, default_value = "data/shards")]
    out: PathBuf,

    /// Tokeniser: `byte` (V = 256, the fast CPU default; NUL is end-of-text, so text must not
    /// contain NUL) or `gpt2` (GPT-2 BPE, V = 50257, the paper's).
    #[arg(long, default_value = "byte")]
    tokenizer: Tokenizer,

    /// Share of every document held out for validation: its last ceil(fraction * n) tokens.
    #[arg(long, default_value_t = DEFAULT_VAL_FRACTION)]
    val_fraction: f64,

    /// Most tokens per shard file; a split longer than this is cut into numbered shards.
    #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS)]
    shard_tokens: u64,

    /// Replace shards already in --out (by default prepare refuses to touch them).
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), DataError> {
    let config = PrepareConfig {
        tokenizer: args.tokenizer,
        val_fraction: args.val_fraction,
        shard_tokens: args.shard_tokens,
        overwrite: args.force,
    };
    config.validate()?;
    let documents = list_documents(&args.inputs)?;
    let total_bytes = documents
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "prepare | {} documents | {} bytes | tokenizer {} | val fraction {} | out {}",
        documents.len(),
        grouped(total_bytes),
        args.tokenizer,
        args.val_fraction,
        args.out.display()
    );

    let bar = progress_bar(total_bytes);
    let started = Instant::now();
    let summary = prepare(&args.inputs, &args.out, &config, &mut |doc| {
        bar.inc(doc.bytes);
        let name = doc.path.file_name().unwrap_or_default().to_string_lossy();
        bar.set_message(name.into_owned());
    });
    bar.finish_and_clear();
    report(&summary?, started.elapsed())
}

fn progress_bar(total_bytes: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(BAR_TEMPLATE).expect("BAR_TEMPLATE is valid");
    ProgressBar::new(total_bytes).with_style(style.progress_chars("=> "))
}

/// One line per shard, then the summary line.
fn report(summary: &PrepareSummary, elapsed: Duration) -> Result<(), DataError> {
    for path in summary.shards.train.iter().chain(&summary.shards.val) {
        let header = peek_header(path)?;
        let width = 8 * header.width.bytes();
        let tokens = grouped(header.token_count);
        println!("shard {} | {tokens} tokens | u{width}", path.display());
    }
    println!(
        // text tokens: the shard counts above also include one end-of-text token per document
        "done | {} documents | train {} text tokens | val {} text tokens | {:.3} bytes/token | \
         {:.1} s",
        summary.documents,
        grouped(summary.train_tokens),
        grouped(summary.val_tokens),
        summary.bytes_per_token(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// 1234567 as "1,234,567".
fn grouped(n: u64) -> String {
    // groups of three digits, least significant first
    let mut groups = vec![n % 1000];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let mut out = groups.pop().expect("one group at least").to_string();
    for group in groups.iter().rev() {
        out.push_str(&format!(",{group:03}"));
    }
    out
}
