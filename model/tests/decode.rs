//! The KV-cache decoder against the reference that reruns the whole forward per token: the same
//! greedy tokens and the same logits for every model kind, solver and depth, across the
//! context window's jumps; and the inputs it refuses.

mod common;

use common::{randomize, tiny};
use odeflow_model::decode::{window_start, Decoder};
use odeflow_model::sample::{full_forward_logits, generate, Decoding, SampleOptions};
use odeflow_model::{Error, Forward, Model, ModelKind, Solver};

/// The cached logits may differ from the full forward's only in the order of the f32 additions
/// inside the attention (and in the head's product of one row instead of T): a few rounding
/// units of the logits' scale per evaluation. Measured: at most 1.1e-6 at a scale of 1.7
/// (llama-ode, RK4, 8 evaluations), about 6 eps (eps = 2^-23). The bar, 2^-16 = 128 eps times
/// max(1, max |logit|), leaves a margin of 20 over that and is far below what a bug gives (a
/// wrong position, or one cache shared by the stages of a step, moves the logits by 1e-1).
const LOGIT_TOLERANCE: f32 = 1.0 / 65536.0;

/// A model of every kind the decoder serves, its weights randomised so that every path is
/// live and the logits are spread (greedy ties are then vanishingly rare).
fn models() -> Vec<(&'static str, Model)> {
    let mut out = Vec::new();
    let kinds = [
        ("neural-ode", ModelKind::NeuralOde),
        ("llama-ode", ModelKind::LlamaOde),
        ("gpt2", ModelKind::Gpt2),
    ];
    for (name, kind) in kinds {
        let model = Model::new(&tiny(kind), 3).unwrap();
        randomize(&model, 0.3, 11);
        out.push((name, model));
    }
    let Model::Ode(ode) = &out[0].1 else {
        unreachable!("the first model is the neural ODE")
    };
    out.push((
        "discrete (neural-ode at 4 layers)",
        Model::Discrete(ode.to_discrete(4).unwrap()),
    ));
    out
}

/// The ways each model runs: its own depth with Euler, and for an ODE model also Euler and
/// RK4 at step counts other than the config's 3.
fn forwards(model: &Model) -> Vec<Forward> {
    let at = |solver, steps| Forward {
        solver,
        steps: Some(steps),
        ..Forward::eval()
    };
    match model {
        Model::Ode(_) => vec![Forward::eval(), at(Solver::Euler, 5), at(Solver::Rk4, 2)],
        _ => vec![Forward::eval()],
    }
}

fn greedy(n: usize, decoding: Decoding) -> SampleOptions {
    SampleOptions {
        temperature: 0.0,
        max_new_tokens: n,
        decoding,
        ..SampleOptions::default()
    }
}

fn max_abs(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn greedy_tokens_with_the_cache_are_the_full_forwards_across_the_window() {
    // P = 8: a prompt of 3 and 21 new tokens run through windows starting at 0, 4, 8, 12, 16
    let prompt = [1, 5, 9];
    for (name, model) in models() {
        assert_eq!(model.config().seq_len, 8);
        for fwd in forwards(&model) {
            let cached = generate(&model, &fwd, &prompt, &greedy(21, Decoding::Cached)).unwrap();
            let full = generate(&model, &fwd, &prompt, &greedy(21, Decoding::Recompute)).unwrap();
            assert_eq!(cached.len(), 21);
            assert_eq!(cached, full, "{name}, {} x {:?}", fwd.solver, fwd.steps);
        }
    }
}

#[test]
fn cached_logits_match_the_full_forward_within_the_tolerance() {
    let v = 32;
    let text: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % v).collect();
    for (name, model) in models() {
        let p = model.config().seq_len;
        for fwd in forwards(&model) {
            let mut decoder = Decoder::new(&model, &fwd).unwrap();
            let mut window = 0;
            // the text grows one token at a time; the decoder sees it as `Generation` does
            for n in 1..=text.len() {
                let start = window_start(n, p);
                if start != window {
                    decoder.clear();
                    window = start;
                }
                let cached = decoder.push(&text[start + decoder.len()..n]).unwrap();
                assert_eq!(decoder.len(), n - start);
                let full = full_forward_logits(&model, &fwd, &text[start..n]).unwrap();
                let scale = max_abs(&full).max(1.0);
                let diff = common::max_abs_diff(&cached, &full);
                assert!(
                    diff <= LOGIT_TOLERANCE * scale,
                    "{name}, {} x {:?}, n {n}: |diff| {diff:e} at scale {scale}",
                    fwd.solver,
                    fwd.steps
                );
            }
        }
    }
}

#[test]
fn a_prefill_of_many_tokens_equals_pushing_them_one_at_a_time() {
    // the offset causal mask of a multi-token push over a non-empty cache
    let (name, model) = models().swap_remove(1);
    let fwd = Forward {
        solver: Solver::Rk4,
        steps: Some(2),
        ..Forward::eval()
    };
    let mut one_by_one = Decoder::new(&model, &fwd).unwrap();
    let mut chunked = Decoder::new(&model, &fwd).unwrap();
    let tokens = [3, 1, 4, 1, 5, 9, 2];
    let mut last = Vec::new();
    for &t in &tokens {
        last = one_by_one.push(&[t]).unwrap();
    }
    chunked.push(&tokens[..2]).unwrap();
    let chunk = chunked.push(&tokens[2..]).unwrap();
    let diff = common::max_abs_diff(&last, &chunk);
    assert!(
        diff <= LOGIT_TOLERANCE * max_abs(&last).max(1.0),
        "{name}: {diff:e}"
    );
}

#[test]
fn there_is_one_cache_per_step_and_stage() {
    for (name, model) in models() {
        for fwd in forwards(&model) {
            let decoder = Decoder::new(&model, &fwd).unwrap();
            assert_eq!(
                decoder.evaluations(),
                model.nfe(&fwd),
                "{name}, {}",
                fwd.solver
            );
        }
    }
    let ode = Model::new(&tiny(ModelKind::NeuralOde), 0).unwrap();
    let rk4 = Forward {
        solver: Solver::Rk4,
        steps: Some(2),
        ..Forward::eval()
    };
    assert_eq!(Decoder::new(&ode, &rk4).unwrap().evaluations(), 8);
}

#[test]
fn the_decoder_refuses_bad_pushes_and_is_cleared_after_one() {
    let model = Model::new(&tiny(ModelKind::NeuralOde), 0).unwrap();
    let mut decoder = Decoder::new(&model, &Forward::eval()).unwrap();
    let cases: [(&[u32], &str); 3] = [
        (&[], "at least one token"),
        (
            &[1, 32],
            "token 32 (at 1 of the 2 pushed) is outside the model's vocabulary of 32",
        ),
        (&[0; 9], "context of 8"),
    ];
    for (tokens, needle) in cases {
        let err = decoder.push(tokens).unwrap_err();
        assert!(matches!(err, Error::Input { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(decoder.len(), 0);
    }
    decoder.push(&[1; 8]).unwrap();
    let err = decoder.push(&[1]).unwrap_err();
    assert!(err.to_string().contains("holds 8 positions"), "{err}");
}

#[test]
fn fixed_depth_models_refuse_other_steps_and_solvers() {
    for (name, model) in models().into_iter().skip(2) {
        let steps = Forward {
            steps: Some(7),
            ..Forward::eval()
        };
        let rk4 = Forward {
            solver: Solver::Rk4,
            ..Forward::eval()
        };
        for (fwd, needle) in [(steps, "fixed depth"), (rk4, "fixed Euler steps")] {
            for decoding in [Decoding::Cached, Decoding::Recompute] {
                let err = generate(&model, &fwd, &[1], &greedy(2, decoding)).unwrap_err();
                assert!(err.to_string().contains(needle), "{name}: {err}");
            }
        }
    }
    let model = Model::new(&tiny(ModelKind::NeuralOde), 0).unwrap();
    let err = Decoder::new(&model, &Forward::train(1)).err().unwrap();
    assert!(err.to_string().contains("dropout"), "{err}");
}
