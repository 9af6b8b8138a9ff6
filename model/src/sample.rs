//! Text generation: extending a prompt one token at a time.
//!
//! A language model gives, at every position, logits over the next token. To continue a
//! prompt, `generate` repeats three steps for each new token:
//!
//! 1. run the model on the last min(n, P) tokens of the text so far (n tokens, P = `seq_len`,
//!    the longest context the position embeddings cover) and keep the last position's logits;
//! 2. keep the `top_k` largest logits (all of them when `top_k` is 0);
//! 3. draw a token with probability softmax(logits / temperature) over those, or take the
//!    largest logit when the temperature is 0 (greedy decoding).
//!
//! A temperature below 1 sharpens the distribution towards the likeliest tokens, above 1 it
//! flattens it. The draws come from the runtime's `Rng`, seeded by the caller, so a seed always
//! gives the same text on every machine (for the same logits).
//!
//! Missing: a KV cache. Each new token reruns the whole forward pass over its context, although
//! only the last position is new: generating N tokens costs N full forwards of up to P
//! positions, where a cache of each layer's keys and values would cost one position each, about
//! P times less once the context is full. That is fine for the trainer's short end-of-run
//! sample. (An ODE model would also need its cache per solver step, since W(t) changes with t.)

use crate::model::{Forward, Model};
use crate::{Config, Error, Result};
use odeflow_autodiff::Tape;
use odeflow_runtime::{Rng, Tensor};

/// How to choose each new token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// The logits are divided by this before the softmax; 0 means greedy (always the largest).
    pub temperature: f32,
    /// Draw only among the `top_k` largest logits; 0 (or at least the vocabulary size) keeps all.
    pub top_k: usize,
    /// The seed of the draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

/// The `new_tokens` tokens that `model` appends to `prompt` (only the new ones are returned).
///
/// The model runs in evaluation mode (`Forward::eval()`: no dropout, the config's depth) with
/// recording off, so nothing is kept for a backward pass. A prompt longer than the model's
/// context is cropped to its last `seq_len` tokens, as is the text as it grows.
///
/// Errors: an empty prompt, a prompt token outside the vocabulary, a negative or NaN
/// temperature (`Error::Input`); logits that are NaN or infinite (`Error::NonFinite`).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    new_tokens: usize,
    opts: &SampleOptions,
) -> Result<Vec<u32>> {
    check_inputs(model.config(), prompt, opts)?;
    let seq_len = model.config().seq_len;
    let tape = Tape::new();
    let mut rng = Rng::new(opts.seed);
    let mut text = prompt.to_vec();
    for _ in 0..new_tokens {
        let context = &text[text.len().saturating_sub(seq_len)..];
        let logits = next_token_logits(model, &tape, context)?;
        let next = choose_token(&logits, opts, &mut rng)?;
        text.push(next as u32);
    }
    Ok(text.split_off(prompt.len()))
}

fn check_inputs(cfg: &Config, prompt: &[u32], opts: &SampleOptions) -> Result<()> {
    let bad = |msg: String| Err(Error::Input { msg });
    if prompt.is_empty() {
        return bad("the prompt is empty; give at least one token to continue".into());
    }
    let v = cfg.vocab_size;
    if let Some((i, id)) = prompt.iter().enumerate().find(|&(_, &id)| id as usize >= v) {
        return bad(format!(
            "prompt token {id} at position {i} is outside the model's vocabulary of {v} \
             tokens; encode the prompt with the tokenizer the model was trained with"
        ));
    }
    if opts.temperature.is_nan() || opts.temperature < 0.0 {
        return bad(format!(
            "the temperature must be 0 (greedy) or positive, got {}",
            opts.temperature
        ));
    }
    Ok(())
}

/// The logits of the token after `context`, from one forward pass with recording off.
///
/// Shapes: context [T] (T <= seq_len) -> logits [V]
fn next_token_logits(model: &Model, tape: &Tape, context: &[u32]) -> Result<Vec<f32>> {
    let t = context.len();
    let ids = Tensor::from_vec(context.to_vec(), &[1, t])?.to_device(model.device())?;
    let logits = tape.no_grad(|| model.forward(tape, &ids, &Forward::eval()))?; // [1, T, V]
    Ok(logits.value().narrow(1, t - 1, 1)?.to_f32_vec()?)
}

/// The index of the next token: the largest logit at temperature 0, otherwise a draw from
/// softmax(logits / temperature) over the `top_k` largest.
///
/// Shapes: logits [V] -> an index in 0..V
fn choose_token(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> Result<usize> {
    if logits.iter().any(|x| !x.is_finite()) {
        let what = "the logits of the next token (is the checkpoint broken?)".to_string();
        return Err(Error::NonFinite { what });
    }
    let candidates = largest_first(logits, opts.top_k);
    if opts.temperature == 0.0 {
        return Ok(candidates[0]);
    }
    Ok(draw(logits, &candidates, f64::from(opts.temperature), rng))
}

/// The indices of the `k` largest logits (all of them when k is 0), largest first; equal logits
/// keep index order, so a tie goes to the lower token id.
///
/// Sorting all V logits costs V log V comparisons per token, nothing beside the forward pass.
fn largest_first(logits: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // a stable sort, descending
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if k > 0 {
        order.truncate(k);
    }
    order
}

/// One draw from p_i = exp(l_i / temperature) / sum_j exp(l_j / temperature) over the
/// `candidates` (indices into `logits`, largest first), in f64 so that the probabilities of
/// rare tokens do not round to zero before the draw.
fn draw(logits: &[f32], candidates: &[usize], temperature: f64, rng: &mut Rng) -> usize {
    // softmax is unchanged by subtracting a constant; subtracting the largest logit keeps every
    // exponent <= 0, so exp cannot overflow
    let largest = f64::from(logits[candidates[0]]);
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&i| ((f64::from(logits[i]) - largest) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // inverse CDF: the first candidate whose running sum passes u * total
    let u = uniform_f64(rng) * total;
    let mut running = 0.0;
    for (&i, w) in candidates.iter().zip(&weights) {
        running += w;
        if u < running {
            return i;
        }
    }
    // unreachable in exact arithmetic (u < 1, and the running sum ends at `total`); a rounding
    // slip falls back to the likeliest token
    candidates[0]
}

/// A uniform f64 in [0, 1) from the top 53 bits of one draw (`Rng::uniform` has only 24 bits).
fn uniform_f64(rng: &mut Rng) -> f64 {
    const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
    (rng.next_u64() >> 11) as f64 * TWO_POW_MINUS_53
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> Model {
        Model::new(&Config::tiny(), 7).unwrap()
    }

    fn opts(temperature: f32, top_k: usize, seed: u64) -> SampleOptions {
        SampleOptions {
            temperature,
            top_k,
            seed,
        }
    }

    /// The logits of the token after `context`, from a forward over all of it (this test's own
    /// forward, not `next_token_logits`).
    fn reference_logits(model: &Model, context: &[u32]) -> Vec<f32> {
        let (t, v) = (context.len(), model.config().vocab_size);
        let ids = Tensor::from_vec(context.to_vec(), &[1, t]).unwrap();
        let tape = Tape::new();
        let logits = model.forward(&tape, &ids, &Forward::eval()).unwrap();
        assert_eq!(logits.shape(), [1, t, v]);
        logits.value().to_f32_vec().unwrap()[(t - 1) * v..].to_vec()
    }

    /// The index of the largest value, the first one on a tie.
    fn argmax(xs: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in xs.iter().enumerate() {
            if x > xs[best] {
                best = i;
            }
        }
        best
    }

    #[test]
    fn the_seed_fixes_the_tokens() {
        let model = tiny_model();
        let prompt = [1, 2, 3];
        let a = generate(&model, &prompt, 20, &opts(1.0, 0, 0)).unwrap();
        let b = generate(&model, &prompt, 20, &opts(1.0, 0, 0)).unwrap();
        let c = generate(&model, &prompt, 20, &opts(1.0, 0, 1)).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a
            .iter()
            .all(|&id| (id as usize) < model.config().vocab_size));
        assert_eq!(a, b);
        // an untrained model's softmax is close to uniform over 256 tokens, so two seeds agree
        // on all 20 tokens with a probability of about 256^-20
        assert_ne!(a, c);
    }

    #[test]
    fn temperature_zero_takes_the_argmax_at_every_step() {
        let model = tiny_model();
        let prompt = [5, 6, 7, 8];
        let tokens = generate(&model, &prompt, 5, &opts(0.0, 0, 0)).unwrap();
        let mut context = prompt.to_vec();
        for &token in &tokens {
            let expected = argmax(&reference_logits(&model, &context));
            assert_eq!(token as usize, expected, "after {context:?}");
            context.push(token);
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let model = tiny_model();
        let prompt = [9, 10, 11];
        let greedy = generate(&model, &prompt, 8, &opts(0.0, 0, 0)).unwrap();
        for seed in [0, 1, 2] {
            let top1 = generate(&model, &prompt, 8, &opts(1.5, 1, seed)).unwrap();
            assert_eq!(top1, greedy, "seed {seed}");
        }
    }

    #[test]
    fn top_k_draws_only_among_the_k_largest_logits() {
        let model = tiny_model();
        let k = 3;
        let mut context = vec![4, 2];
        let tokens = generate(&model, &context, 6, &opts(2.0, k, 11)).unwrap();
        for &token in &tokens {
            let logits = reference_logits(&model, &context);
            let kth_largest = {
                let mut sorted = logits.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                sorted[k - 1]
            };
            assert!(
                logits[token as usize] >= kth_largest,
                "token {token} after {context:?}"
            );
            context.push(token);
        }
    }

    #[test]
    fn a_prompt_longer_than_the_context_is_cropped() {
        let model = tiny_model();
        let seq_len = model.config().seq_len;
        let long: Vec<u32> = (0..seq_len as u32 + 10).map(|i| (i * 37) % 256).collect();
        let tokens = generate(&model, &long, 3, &opts(0.0, 0, 0)).unwrap();
        // only the last seq_len tokens are seen, so the cropped prompt gives the same tokens
        let cropped = generate(&model, &long[10..], 3, &opts(0.0, 0, 0)).unwrap();
        assert_eq!(tokens, cropped);
        let expected = argmax(&reference_logits(&model, &long[10..]));
        assert_eq!(tokens[0] as usize, expected);
    }

    #[test]
    fn draws_follow_the_softmax_of_logits_over_temperature() {
        // logits [0, ln 3]: at temperature 1, p1 = 3 / (1 + 3) = 0.75; at temperature 2 the
        // logits halve, p1 = sqrt 3 / (1 + sqrt 3) = 0.634
        let logits = [0.0, 3f32.ln()];
        let n = 20_000;
        for (temperature, p1) in [(1.0, 0.75), (2.0, 3f64.sqrt() / (1.0 + 3f64.sqrt()))] {
            let mut rng = Rng::new(5);
            let o = opts(temperature, 0, 0);
            let ones = (0..n)
                .filter(|_| choose_token(&logits, &o, &mut rng).unwrap() == 1)
                .count();
            let freq = ones as f64 / n as f64;
            // standard error sqrt(p (1 - p) / n) < 0.0035; allow 5 of them
            assert!(
                (freq - p1).abs() < 0.0175,
                "T {temperature}: {freq} vs {p1}"
            );
        }
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        let mut rng = Rng::new(0);
        let err = choose_token(&[0.0, f32::NAN], &opts(1.0, 0, 0), &mut rng).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let model = tiny_model();
        let v = model.config().vocab_size as u32;
        let cases: [(&[u32], f32, &str); 4] = [
            (&[], 1.0, "prompt is empty"),
            (&[1, v, 2], 1.0, "position 1"),
            (&[1, 2], -0.5, "temperature"),
            (&[1, 2], f32::NAN, "temperature"),
        ];
        for (prompt, temperature, needle) in cases {
            let err = generate(&model, prompt, 4, &opts(temperature, 0, 0)).unwrap_err();
            assert!(matches!(err, Error::Input { .. }), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
