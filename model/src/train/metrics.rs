//! `metrics.jsonl`: one JSON object per line, a line per training step and one per evaluation.
//!
//! ```text
//! {"kind":"train","step":1,"loss":5.61,"lr":1e-4,"grad_norm":1.9,"ms":41.0,
//!  "tokens_per_s":18700.0,"nfe":4}      (one line in the file; wrapped here)
//! {"kind":"val","step":100,"loss":2.47,"perplexity":11.8,"tokens":15360,"seconds":0.4}
//! ```
//!
//! Lines are appended and flushed as they come, so a killed run leaves every completed line. On
//! resume from the checkpoint of step s, the lines after step s are dropped first (they belong
//! to steps the resumed run does again), so the file ends up as if the run had never stopped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One optimiser step, as the trainer measured it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed, this one included (1 for the first step).
    pub step: usize,
    /// The mean training loss over the step's micro-batches (nats per token).
    pub loss: f64,
    /// The learning rate this step used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock milliseconds of the whole step (data, forward, backward, update).
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Vector-field evaluations per forward pass (the depth L for a discrete model).
    pub nfe: usize,
}

/// One evaluation on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps completed when it was taken.
    pub step: usize,
    /// Mean loss per token, in nats.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    pub seconds: f64,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Train(StepRecord),
    Val(EvalRecord),
}

impl Record {
    pub fn step(&self) -> usize {
        match self {
            Record::Train(r) => r.step,
            Record::Val(r) => r.step,
        }
    }
}

/// The open metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl MetricsLog {
    /// Starts a new, empty file at `path` (replacing one that is there).
    pub fn create(path: &Path) -> Result<MetricsLog> {
        let file = File::create(path).map_err(io(path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reopens the file of a run resumed after `step`: keeps the records up to and including
    /// `step` and drops the rest, writing the kept part atomically before appending.
    pub fn resume(path: &Path, step: usize) -> Result<MetricsLog> {
        // a run killed before its first line has no file yet
        let kept: Vec<Record> = if path.exists() {
            read(path)?
                .into_iter()
                .filter(|r| r.step() <= step)
                .collect()
        } else {
            Vec::new()
        };
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut out = File::create(&tmp).map_err(io(&tmp))?;
            for record in &kept {
                writeln!(out, "{}", line(record)).map_err(io(&tmp))?;
            }
            out.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record and flushes it to the OS.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        writeln!(self.file, "{}", line(record)).map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn line(record: &Record) -> String {
    serde_json::to_string(record).expect("plain data serialises")
}

/// Every record of a metrics file. A last line cut short by a kill is skipped; any other line
/// that does not parse is an error.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(io(path))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(io(path))?;
    let mut records = Vec::with_capacity(lines.len());
    for (i, text) in lines.iter().enumerate() {
        match serde_json::from_str(text) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(Error::Input {
                    msg: format!(
                        "{}: line {} is not a metrics record: {e}",
                        path.display(),
                        i + 1
                    ),
                })
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: usize, loss: f64) -> Record {
        Record::Train(StepRecord {
            step,
            loss,
            lr: 1e-3,
            grad_norm: 0.5,
            ms: 10.0,
            tokens_per_s: 100.0,
            nfe: 4,
        })
    }

    #[test]
    fn resume_drops_the_records_after_the_checkpoint_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        for step in 1..=6 {
            log.append(&train(step, step as f64)).unwrap();
        }
        drop(log);
        // a kill in the middle of a write leaves a partial line
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"kind\":\"train\",\"st").unwrap();
        drop(f);
        let mut log = MetricsLog::resume(&path, 4).unwrap();
        log.append(&train(5, 50.0)).unwrap();
        let steps: Vec<(usize, f64)> = read(&path)
            .unwrap()
            .iter()
            .map(|r| match r {
                Record::Train(t) => (t.step, t.loss),
                Record::Val(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            steps,
            vec![(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
        );
    }

    #[test]
    fn a_corrupt_line_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let val = r#"{"kind":"val","step":1,"loss":1.0,"perplexity":2.7,"tokens":1,"seconds":0.0}"#;
        fs::write(&path, format!("not json\n{val}\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
