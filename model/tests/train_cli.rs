//! The `train` binary end to end, on a small corpus and a small model: a run killed with
//! SIGKILL and resumed reproduces the uninterrupted loss curve bit for bit; Ctrl-C saves and
//! resumes; a NaN loss stops with the last checkpoint intact; an unwritable output folder fails
//! before the first step; an existing run is never overwritten by accident.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use odeflow_model::checkpoint;
use odeflow_model::train::{metrics, run_state, Record};

/// A model small enough that a step takes about a millisecond: D 32, 2 heads, 2 steps.
const CONFIG: &str = r#"
model = "neural-ode"
vocab_size = 256
seq_len = 16
d_model = 32
n_heads = 2
n_steps = 2
time_embed_dim = 4
sinusoidal_dim = 4
dropout = 0.1
"#;

/// A scratch folder with a corpus and the model config.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // some thousands of bytes of varied text: enough windows for both splits
        let text: String = (0..400)
            .map(|i| {
                format!(
                    "line {i}: the quick brown fox jumps over {} lazy dogs.\n",
                    i * 7 % 13
                )
            })
            .collect();
        fs::write(root.join("corpus.txt"), text).unwrap();
        fs::write(root.join("model.toml"), CONFIG).unwrap();
        Scratch { _dir: dir, root }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The flags of a small run into `out`, plus `extra`.
    fn command(&self, out: &Path, extra: &[&str]) -> Command {
        // the GPU check carries the binaries to another machine and says where they are
        let bin = std::env::var("ODEFLOW_TRAIN_BIN");
        let mut cmd = Command::new(bin.as_deref().unwrap_or(env!("CARGO_BIN_EXE_train")));
        let root = |p: &str| self.root.join(p).display().to_string();
        cmd.args([
            "--corpus",
            &root("corpus.txt"),
            "--data-dir",
            &root("shards"),
        ])
        .args(["--out-dir", &out.display().to_string()])
        .args(["--sample-tokens", "0"])
        .args(extra)
        .stdin(Stdio::null());
        cmd
    }

    fn run(&self, out: &Path, extra: &[&str]) -> Output {
        self.command(out, extra).output().expect("train runs")
    }
}

/// The flags of the run the resume tests repeat.
fn long_run(config: &Path) -> Vec<String> {
    let flags = "--steps 400 --batch 4 --eval-every 50 --eval-batches 2 --checkpoint-every 25";
    let mut v: Vec<String> = flags.split(' ').map(String::from).collect();
    v.extend(["--config".into(), config.display().to_string()]);
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every record of a run's metrics.jsonl, with each loss as its exact bits.
fn curve(out: &Path) -> Vec<(String, usize, u64)> {
    let records = metrics::read(&out.join("metrics.jsonl")).unwrap();
    records
        .iter()
        .map(|r| match r {
            Record::Train(s) => ("train".into(), s.step, s.loss.to_bits()),
            Record::Val(e) => ("val".into(), e.step, e.loss.to_bits()),
        })
        .collect()
}

fn train_lines(out: &Path) -> usize {
    fs::read_to_string(out.join("metrics.jsonl"))
        .map(|s| s.lines().filter(|l| l.contains("\"train\"")).count())
        .unwrap_or(0)
}

/// Waits until the run in `out` has logged at least `lines` steps, and checks it is still
/// running (so what follows interrupts it mid-run).
fn wait_for_steps(child: &mut Child, out: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while train_lines(out) < lines {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(Instant::now() < deadline, "the run is too slow");
        sleep(Duration::from_millis(1));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before the interrupt"
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_identical_loss_curve() {
    let s = Scratch::new();
    let flags = long_run(&s.out("model.toml"));
    let whole = s.out("whole");
    let o = s.run(&whole, &strs(&flags));
    assert!(o.status.success(), "{}", stderr(&o));

    let killed = s.out("killed");
    let mut child = s
        .command(&killed, &strs(&flags))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &killed, 160);
    child.kill().unwrap(); // SIGKILL: no handler runs, no checkpoint is written
    child.wait().unwrap();
    let saved = checkpoint::read(&killed.join("checkpoint.safetensors")).unwrap();
    let at = run_state(&killed, &saved.metadata).unwrap().step;
    assert!(
        (150..400).contains(&at) && at.is_multiple_of(25),
        "killed at step {at}"
    );

    let o = s.run(&killed, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (curve(&whole), curve(&killed));
    assert_eq!(
        a.len(),
        400 + 400 / 50,
        "every step and every evaluation, once"
    );
    assert_eq!(
        a, b,
        "the resumed run must repeat the uninterrupted one bit for bit"
    );
    // and so must the final weights
    let wa = checkpoint::read(&whole.join("checkpoint.safetensors")).unwrap();
    let wb = checkpoint::read(&killed.join("checkpoint.safetensors")).unwrap();
    for (name, t) in &wa.params {
        let (x, y) = (
            t.to_f32_vec().unwrap(),
            wb.params[name].to_f32_vec().unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name}"
        );
    }
    assert!(whole.join("loss.png").exists() && killed.join("loss.png").exists());
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_run_resumes_from_it() {
    let s = Scratch::new();
    let flags = long_run(&s.out("model.toml"));
    let out = s.out("run");
    let mut child = s
        .command(&out, &strs(&flags))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(&mut child, &out, 60);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("interrupted: checkpoint of step"),
        "{stdout}"
    );
    let saved = checkpoint::read(&out.join("checkpoint.safetensors")).unwrap();
    let at = run_state(&out, &saved.metadata).unwrap().step;
    assert!((60..400).contains(&at), "saved at step {at}");
    // the interrupt's checkpoint is the last logged step, so nothing is lost or repeated
    assert_eq!(train_lines(&out), at);

    let o = s.run(&out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let steps: Vec<usize> = curve(&out)
        .iter()
        .filter(|(kind, _, _)| kind == "train")
        .map(|r| r.1)
        .collect();
    assert_eq!(steps, (1..=400).collect::<Vec<_>>());
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let s = Scratch::new();
    let out = s.out("nan");
    let config = s.out("model.toml").display().to_string();
    // a learning rate this large blows the weights up within a few steps
    let flags = [
        "--config", &config, "--steps", "200", "--batch", "4", "--lr", "1e7",
    ];
    let o = s.run(
        &out,
        &[&flags[..], &["--warmup", "0", "--checkpoint-every", "1"]].concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("non-finite"), "{err}");
    assert!(err.contains("the last checkpoint (step"), "{err}");
    // the checkpoint loads, holds finite weights, and is from before the failing step
    let saved = checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let at = run_state(&out, &saved.metadata).unwrap().step;
    assert!(at < 200, "{at}");
    for p in saved.model.params() {
        assert!(
            p.value()
                .to_f32_vec()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()),
            "{}",
            p.name()
        );
    }
}

#[test]
fn an_unwritable_output_folder_fails_before_training() {
    let s = Scratch::new();
    // a folder inside a regular file cannot be created
    let file = s.out("a-file");
    fs::write(&file, "x").unwrap();
    let config = s.out("model.toml").display().to_string();
    let o = s.run(&file.join("run"), &["--config", &config, "--steps", "5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot create it in the output folder"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("step "),
        "no step ran"
    );
}

#[test]
fn an_existing_run_is_not_replaced_and_resume_flags_must_agree() {
    let s = Scratch::new();
    let out = s.out("run");
    let config = s.out("model.toml").display().to_string();
    let flags = ["--config", &config, "--steps", "3", "--batch", "2"];
    assert!(s.run(&out, &flags).status.success());
    let o = s.run(&out, &flags);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
    let o = s.run(&out, &["--resume", "--batch", "8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--batch 8 (the run has 2)"),
        "{}",
        stderr(&o)
    );
    // --force starts over
    assert!(s
        .run(&out, &[&flags[..], &["--force"]].concat())
        .status
        .success());
    // --resume of a finished run has nothing to do, and says so by finishing at once
    let o = s.run(&out, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn any_solver_and_gradient_mode_trains_and_resume_keeps_them() {
    let s = Scratch::new();
    let config = s.out("model.toml").display().to_string();
    let base = ["--config", &config, "--steps", "4", "--batch", "2"];
    for (solver, grad) in [
        ("rk4", "adjoint"),
        ("heun", "adjoint:1"),
        ("midpoint", "checkpoint"),
    ] {
        let out = s.out(&format!("{solver}-{grad}"));
        let flags = [&base[..], &["--solver", solver, "--grad-mode", grad]].concat();
        let o = s.run(&out, &flags);
        assert!(o.status.success(), "{solver} {grad}: {}", stderr(&o));
        let state = checkpoint::read(&out.join("checkpoint.safetensors")).unwrap();
        let options = run_state(Path::new("x"), &state.metadata).unwrap().options;
        assert_eq!(
            (options.solver.to_string(), options.grad.to_string()),
            (solver.to_string(), grad.to_string())
        );
        // a step's line counts the stages' evaluations: 2 steps x 4 stages for rk4
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let nfe = match solver {
            "rk4" => "nfe 8",
            _ => "nfe 4",
        };
        assert!(stdout.contains(nfe), "{solver}: {stdout}");
        let o = s.run(&out, &["--resume", "--solver", "euler"]);
        assert!(
            stderr(&o).contains("--solver euler (the run has"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn the_adjoint_on_a_model_with_fixed_layers_or_an_unknown_mode_is_refused() {
    let s = Scratch::new();
    let config = s.out("model.toml").display().to_string();
    let flags = ["--config", &config, "--model", "gpt2", "--steps", "2"];
    let o = s.run(
        &s.out("gpt2"),
        &[&flags[..], &["--grad-mode", "adjoint"]].concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("use backprop or checkpoint"),
        "{}",
        stderr(&o)
    );
    let o = s.run(
        &s.out("bad"),
        &["--config", &config, "--grad-mode", "adjoint:0"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("adjoint:K"), "{}", stderr(&o));
}

#[test]
fn the_cuda_device_without_a_driver_fails_at_once_with_a_hint() {
    let s = Scratch::new();
    let config = s.out("model.toml").display().to_string();
    let o = s.run(
        &s.out("gpu"),
        &["--config", &config, "--device", "cuda", "--steps", "2"],
    );
    if odeflow_kernels::gpu::driver_present() {
        return; // a machine with a GPU runs the step instead (the GPU tests cover it)
    }
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no CUDA driver found; run on CPU with --device cpu"),
        "{}",
        stderr(&o)
    );
    assert!(!s.out("gpu").join("checkpoint.safetensors").exists());
    let o = s.run(&s.out("bad"), &["--config", &config, "--device", "gpu"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cuda:N"), "{}", stderr(&o));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_gpu_run_follows_the_cpu_run_for_its_first_20_steps() {
    // bf16 compute on both sides: the losses differ by the kernels' order of additions and by
    // where each side rounds to bf16, which over 20 steps stays within 2% of the loss
    let s = Scratch::new();
    let config = s.out("model.toml").display().to_string();
    let flags = [
        "--config",
        &config,
        "--steps",
        "20",
        "--batch",
        "4",
        "--eval-every",
        "0",
        "--precision",
        "bf16",
    ];
    for device in ["cpu", "cuda"] {
        let o = s.run(
            &s.out(device),
            &[&flags[..], &["--device", device]].concat(),
        );
        assert!(o.status.success(), "{device}: {}", stderr(&o));
    }
    let (cpu, gpu) = (curve(&s.out("cpu")), curve(&s.out("cuda")));
    let train = |c: &[(String, usize, u64)]| -> Vec<f64> {
        c.iter()
            .filter(|(kind, _, _)| kind == "train")
            .map(|(_, _, bits)| f64::from_bits(*bits))
            .collect()
    };
    let (a, b) = (train(&cpu), train(&gpu));
    assert_eq!(a.len(), 20);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 2e-2 * x.abs(),
            "step {}: cpu {x}, gpu {y}",
            step + 1
        );
    }
}

#[test]
fn a_bf16_run_follows_the_f32_run_and_resume_keeps_its_precision() {
    let s = Scratch::new();
    let config = s.out("model.toml").display().to_string();
    let flags = [
        "--config",
        &config,
        "--steps",
        "30",
        "--batch",
        "4",
        "--eval-every",
        "0",
    ];
    for p in ["f32", "bf16"] {
        let o = s.run(&s.out(p), &[&flags[..], &["--precision", p]].concat());
        assert!(o.status.success(), "{p}: {}", stderr(&o));
    }
    let losses = |p: &str| -> Vec<f64> {
        curve(&s.out(p))
            .iter()
            .filter(|(kind, _, _)| kind == "train")
            .map(|(_, _, bits)| f64::from_bits(*bits))
            .collect()
    };
    let (full, half) = (losses("f32"), losses("bf16"));
    assert_eq!(half.len(), 30);
    // the same data, masks and initial weights: bf16 rounding moves each loss by well under
    // 2%, and the run learns like the f32 one
    for (step, (a, b)) in full.iter().zip(&half).enumerate() {
        assert!(
            (a - b).abs() <= 2e-2 * a,
            "step {}: f32 {a}, bf16 {b}",
            step + 1
        );
    }
    assert!(half[29] < half[0] - 1.0, "bf16 losses {half:?}");
    let o = s.run(&s.out("bf16"), &["--resume", "--precision", "f32"]);
    assert!(
        stderr(&o).contains("--precision f32 (the run has bf16)"),
        "{}",
        stderr(&o)
    );
}
