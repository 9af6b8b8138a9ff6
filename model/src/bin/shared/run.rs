//! The run loop that `train` and `finetune` share: steps with one log line each above a
//! progress bar, periodic validation and checkpoints, Ctrl-C, and the end of a run. Both
//! binaries include this file (`#[path = "shared/run.rs"] mod run;`); it is not a binary of its
//! own.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use odeflow_data::{ensure_shards, PrepareConfig, ShardSet, Tokenizer, TrainLoader, ValLoader};
use odeflow_model::plot::{plot_curves, Curve};
use odeflow_model::train::{self, metrics, EvalRecord, MetricsLog, Record, StepRecord};
use odeflow_model::train::{TrainOptions, Trainer};
use odeflow_model::{checkpoint, Config, Model};
use odeflow_runtime::Device;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BAR_TEMPLATE: &str = "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} steps (eta {eta})";

/// The run's files in --out-dir.
pub struct RunFiles {
    pub dir: PathBuf,
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    pub plot: PathBuf,
    pub config: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path) -> RunFiles {
        RunFiles {
            dir: dir.to_path_buf(),
            checkpoint: dir.join("checkpoint.safetensors"),
            metrics: dir.join("metrics.jsonl"),
            plot: dir.join("loss.png"),
            config: dir.join("config.toml"),
        }
    }
}

/// A binary's exit: the run's own code, or one `error:` line and code 1.
pub fn exit_code(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The last line of a run that finished.
pub fn done_line(trainer: &Trainer, eval: &EvalRecord, files: &RunFiles) -> String {
    format!(
        "done: {} steps in {:.1} s of training; val loss {:.4} (perplexity {:.2}); files in {}",
        trainer.steps_done(),
        trainer.train_seconds(),
        eval.loss,
        eval.perplexity,
        files.dir.display()
    )
}

/// The trainer and its metrics log: a fresh run of `model` on `device` (its config written
/// beside the run's files), or, with no model, the run saved in `files` resumed there.
pub fn open_run(
    files: &RunFiles,
    model: Option<Model>,
    loader: TrainLoader,
    options: &TrainOptions,
    device: Device,
) -> Result<(Trainer, MetricsLog)> {
    match model {
        None => {
            let trainer = Trainer::resume(&files.checkpoint, loader, device)?;
            let (done, total) = (trainer.steps_done(), options.steps);
            println!(
                "resuming {} at step {done}/{total}",
                files.checkpoint.display()
            );
            let log = MetricsLog::resume(&files.metrics, trainer.steps_done())?;
            Ok((trainer, log))
        }
        Some(model) => {
            model.to_device(device)?;
            fs::write(&files.config, model.config().to_toml())?;
            let trainer = Trainer::new(model, loader, options.clone())?;
            Ok((trainer, MetricsLog::create(&files.metrics)?))
        }
    }
}

/// How `train_to_end` stopped.
pub enum Ending {
    /// Every step ran; the final validation pass.
    Done(EvalRecord),
    /// Ctrl-C: a checkpoint of the last finished step was written.
    Interrupted,
}

/// Runs `trainer` to its last step: a line per step (and per validation pass and checkpoint)
/// into `log` and onto the terminal, then the final validation pass, a checkpoint and the plot.
/// Ctrl-C finishes the current step and writes a checkpoint. A failed step (a NaN loss) leaves
/// the last checkpoint untouched and says which step it holds.
pub fn train_to_end(
    trainer: &mut Trainer,
    val: &mut ValLoader,
    log: &mut MetricsLog,
    files: &RunFiles,
) -> Result<Ending> {
    let options = trainer.options().clone();
    let ode = trainer.model().config().model.is_ode();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
    }
    let bar = ProgressBar::new(options.steps as u64);
    bar.set_style(ProgressStyle::with_template(BAR_TEMPLATE).expect("a valid template"));
    bar.set_position(trainer.steps_done() as u64);
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };

    while !trainer.is_done() {
        if interrupted.load(Ordering::SeqCst) {
            bar.abandon();
            trainer.save(&files.checkpoint)?;
            println!(
                "interrupted: checkpoint of step {} written to {}; continue with --resume",
                trainer.steps_done(),
                files.checkpoint.display()
            );
            return Ok(Ending::Interrupted);
        }
        let record = match trainer.step() {
            Ok(record) => record,
            Err(err) => {
                bar.abandon();
                let kept = match checkpoint::read(&files.checkpoint) {
                    Ok(c) => match train::run_state(&files.checkpoint, &c.metadata) {
                        Ok(state) => format!("step {}", state.step),
                        Err(_) => "unreadable".into(),
                    },
                    Err(_) => "none written yet".into(),
                };
                return Err(format!(
                    "{err}\nthe last checkpoint ({kept}) is untouched: {}",
                    files.checkpoint.display()
                )
                .into());
            }
        };
        say(step_line(&record, options.steps, ode));
        log.append(&Record::Train(record))?;
        bar.set_position(trainer.steps_done() as u64);
        let step = trainer.steps_done();
        if options.eval_every > 0 && step.is_multiple_of(options.eval_every) && !trainer.is_done() {
            let eval = trainer.evaluate(val, options.eval_batches)?;
            say(eval_line(&eval, "val"));
            log.append(&Record::Val(eval))?;
        }
        if options.checkpoint_every > 0 && step.is_multiple_of(options.checkpoint_every) {
            let start = Instant::now();
            trainer.save(&files.checkpoint)?;
            say(format!(
                "checkpoint step {step} -> {} ({:.0} ms)",
                files.checkpoint.display(),
                start.elapsed().as_secs_f64() * 1e3
            ));
        }
    }
    bar.finish_and_clear();

    // the end: a larger validation pass, a checkpoint, the plot
    let eval = trainer.evaluate(val, options.final_eval_batches)?;
    println!("{}", eval_line(&eval, "final val"));
    log.append(&Record::Val(eval.clone()))?;
    trainer.save(&files.checkpoint)?;
    plot(files)?;
    Ok(Ending::Done(eval))
}

/// Fails now, not after an hour of training, if the run's files cannot be written: creates the
/// folder and writes (then removes) a file as big as one checkpoint.
pub fn preflight(files: &RunFiles, cfg: &Config) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| -> Box<dyn std::error::Error> {
        format!(
            "cannot {what} in the output folder {}: {e}; choose another with --out-dir",
            files.dir.display()
        )
        .into()
    };
    fs::create_dir_all(&files.dir).map_err(|e| fail("create it", e))?;
    // parameters and two moments in f32, and room for the metadata
    let bytes = cfg.param_count() * 4 * 3 + (1 << 20);
    let probe = files.dir.join(".write-probe");
    let written = (|| {
        let mut f = fs::File::create(&probe)?;
        let chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n])?;
            left -= n;
        }
        f.sync_all()
    })();
    let _ = fs::remove_file(&probe);
    written.map_err(|e| fail(&format!("write a checkpoint-sized file ({bytes} bytes)"), e))
}

/// The corpus's shards, tokenised now if this is the first run.
pub fn shards(corpus: &[PathBuf], tokenizer: Tokenizer, dir: &Path) -> Result<ShardSet> {
    if let Some(set) = ShardSet::find(dir, tokenizer)? {
        return Ok(set);
    }
    println!(
        "preparing {} shards of {} in {} (first run only)",
        tokenizer,
        corpus
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    let start = Instant::now();
    let set = ensure_shards(corpus, dir, &PrepareConfig::new(tokenizer))?;
    println!(
        "prepared {} train and {} val shard(s) in {:.2} s",
        set.train.len(),
        set.val.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(set)
}

pub fn step_line(r: &StepRecord, steps: usize, ode: bool) -> String {
    let nfe = if ode {
        format!(" | nfe {}", r.nfe)
    } else {
        String::new()
    };
    format!(
        "step {:>5}/{steps} | loss {:.4} | lr {:.2e} | {:.1} ms | {:.0} tok/s{nfe}",
        r.step, r.loss, r.lr, r.ms, r.tokens_per_s
    )
}

pub fn eval_line(e: &EvalRecord, what: &str) -> String {
    format!(
        "{what} at step {}: loss {:.4} | perplexity {:.2} | {} tokens in {:.1} s",
        e.step, e.loss, e.perplexity, e.tokens, e.seconds
    )
}

/// loss.png from everything in metrics.jsonl (this run and the parts before any resume).
pub fn plot(files: &RunFiles) -> Result<()> {
    let records = metrics::read(&files.metrics)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for r in &records {
        match r {
            Record::Train(s) => train.push((s.step as f64, s.loss)),
            Record::Val(e) => val.push((e.step as f64, e.loss)),
        }
    }
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
    let title = format!("{}: loss", files.dir.display());
    plot_curves(&files.plot, &title, "step", "loss (nats/token)", &curves)?;
    println!("plot -> {}", files.plot.display());
    Ok(())
}
