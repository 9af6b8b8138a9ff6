//! Text generation: extending a prompt one token at a time (`docs/12-generation.md`).
//!
//! A language model gives, at every position, logits over the next token. To continue a
//! prompt, `Generation` repeats two steps for each new token:
//!
//! 1. the logits of the token after the text so far, seen through its context window (the
//!    last tokens, `decode::window_start`): from the incremental `Decoder`, which keeps every
//!    evaluation's keys and values and so runs only the newest position through the model
//!    (`Decoding::Cached`), or from a whole forward pass over the window
//!    (`Decoding::Recompute`, the reference the decoder is tested and benchmarked against);
//! 2. a choice: the largest logit at temperature 0 (greedy decoding); otherwise a draw from
//!    p_i = softmax(logits / temperature), restricted to the `top_k` largest logits and then to
//!    the nucleus, the fewest likeliest tokens whose probability adds up to `top_p`.
//!
//! A temperature below 1 sharpens the distribution towards the likeliest tokens, above 1 it
//! flattens it; top-k and top-p cut off the long tail of unlikely tokens, whose many small
//! probabilities together would otherwise be drawn now and then. The draws come from the
//! runtime's `Rng`, seeded by the caller, so a seed always gives the same text on every machine
//! (for the same logits). Generation ends after `max_new_tokens`, or when the stop token (the
//! tokenizer's end-of-text) is drawn.

use crate::decode::{window_start, Decoder};
use crate::model::{Forward, Model};
use crate::{Config, Error, Result};
use odeflow_autodiff::Tape;
use odeflow_data::Tokenizer;
use odeflow_runtime::{Rng, Tensor};

/// `SampleOptions::default().max_new_tokens`.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// Where the logits of each new token come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoding {
    /// The KV-cache decoder: one position of work per token (`decode.rs`).
    #[default]
    Cached,
    /// A whole forward pass over the context window per token: the reference.
    Recompute,
}

/// How to choose each new token, and when to stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// The logits are divided by this before the softmax; 0 means greedy (always the largest).
    pub temperature: f32,
    /// Draw only among the `top_k` largest logits; 0 (or at least the vocabulary size) keeps all.
    pub top_k: usize,
    /// Then only among the fewest likeliest tokens whose probabilities sum to at least `top_p`,
    /// in (0, 1]; 1 keeps all.
    pub top_p: f32,
    /// The seed of the draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation ends when this token is drawn (it is not returned): the end-of-text token.
    pub stop_token: Option<u32>,
    /// A prompt longer than the model's context: keep its last `seq_len` tokens (true), or
    /// refuse it (false).
    pub keep_tail: bool,
    pub decoding: Decoding,
}

impl Default for SampleOptions {
    /// Temperature 1, no top-k or top-p cut, seed 0, 256 tokens, no stop token, cached.
    fn default() -> SampleOptions {
        SampleOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            stop_token: None,
            keep_tail: false,
            decoding: Decoding::Cached,
        }
    }
}

/// One generation in progress: call `next_token` until it returns `None`.
pub struct Generation<'m> {
    model: &'m Model,
    fwd: Forward,
    opts: SampleOptions,
    rng: Rng,
    /// The prompt (its tail, with `keep_tail`) and every token chosen since.
    text: Vec<u32>,
    prompt_len: usize,
    /// `Decoding::Cached`: the decoder, and where in `text` its window starts.
    decoder: Option<(Decoder<'m>, usize)>,
    stopped: bool,
}

impl<'m> Generation<'m> {
    /// A generation continuing `prompt` with `model` run as `fwd` says (its solver and step
    /// count; no dropout).
    ///
    /// Errors (`Error::Input`): an empty prompt, a prompt token outside the vocabulary, a
    /// prompt longer than the context without `keep_tail`, a negative or NaN temperature, a
    /// top-p outside (0, 1], a `fwd` the model cannot run (`Model::check_forward`).
    pub fn new(
        model: &'m Model,
        fwd: &Forward,
        prompt: &[u32],
        opts: &SampleOptions,
    ) -> Result<Generation<'m>> {
        check_options(opts)?;
        let prompt = fit_prompt(model.config(), prompt, opts.keep_tail)?;
        model.check_forward(fwd)?;
        let decoder = match opts.decoding {
            Decoding::Cached => Some((Decoder::new(model, fwd)?, 0)),
            Decoding::Recompute => None,
        };
        Ok(Generation {
            model,
            fwd: Forward {
                dropout_seed: None,
                ..*fwd
            },
            opts: *opts,
            rng: Rng::new(opts.seed),
            text: prompt.to_vec(),
            prompt_len: prompt.len(),
            decoder,
            stopped: false,
        })
    }

    /// The next token, or `None` once `max_new_tokens` are out or the stop token was drawn.
    ///
    /// Errors: logits that are NaN or infinite (`Error::NonFinite`), and whatever the forward
    /// pass raises.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.stopped || self.generated().len() >= self.opts.max_new_tokens {
            return Ok(None);
        }
        let logits = self.next_logits()?;
        let token = choose_token(&logits, &self.opts, &mut self.rng)? as u32;
        if Some(token) == self.opts.stop_token {
            self.stopped = true;
            return Ok(None);
        }
        self.text.push(token);
        Ok(Some(token))
    }

    /// The prompt as the model sees it (its tail, with `keep_tail`).
    pub fn prompt(&self) -> &[u32] {
        &self.text[..self.prompt_len]
    }

    /// The tokens chosen so far.
    pub fn generated(&self) -> &[u32] {
        &self.text[self.prompt_len..]
    }

    /// Whether generation ended at the stop token.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The logits after `text`, seen through its window: the decoder appends the tokens it has
    /// not seen yet (the prompt at first, then one token), or re-prefills a window that moved.
    ///
    /// Shapes: -> logits [V]
    fn next_logits(&mut self) -> Result<Vec<f32>> {
        let start = window_start(self.text.len(), self.model.config().seq_len);
        match &mut self.decoder {
            None => full_forward_logits(self.model, &self.fwd, &self.text[start..]),
            Some((decoder, window)) => {
                if *window != start {
                    decoder.clear();
                    *window = start;
                }
                decoder.push(&self.text[start + decoder.len()..])
            }
        }
    }
}

/// The tokens `model` appends to `prompt` (only the new ones): a whole `Generation`.
pub fn generate(
    model: &Model,
    fwd: &Forward,
    prompt: &[u32],
    opts: &SampleOptions,
) -> Result<Vec<u32>> {
    let mut generation = Generation::new(model, fwd, prompt, opts)?;
    while generation.next_token()?.is_some() {}
    Ok(generation.generated().to_vec())
}

/// The logits of the token after `context`, from one whole forward pass with recording off:
/// the reference the cached decoder is held to.
///
/// Shapes: context [T] (1 <= T <= seq_len) -> logits [V]
pub fn full_forward_logits(model: &Model, fwd: &Forward, context: &[u32]) -> Result<Vec<f32>> {
    let t = context.len();
    if t == 0 {
        return Err(Error::Input {
            msg: "the context is empty: the model needs a token to predict the next".into(),
        });
    }
    let ids = Tensor::from_vec(context.to_vec(), &[1, t])?.to_device(model.device())?;
    let tape = Tape::new();
    let logits = tape.no_grad(|| model.forward(&tape, &ids, fwd))?; // [1, T, V]
    Ok(logits.value().narrow(1, t - 1, 1)?.to_f32_vec()?)
}

/// The prompt the model will see: refused if empty or holding an id outside the vocabulary;
/// cropped to its last `seq_len` tokens with `keep_tail`, refused without.
fn fit_prompt<'p>(cfg: &Config, prompt: &'p [u32], keep_tail: bool) -> Result<&'p [u32]> {
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
    let (n, p) = (prompt.len(), cfg.seq_len);
    match (n > p, keep_tail) {
        (false, _) => Ok(prompt),
        (true, true) => Ok(&prompt[n - p..]),
        (true, false) => bad(format!(
            "the prompt is {n} tokens long, longer than the model's context of {p} tokens; \
             shorten it, or keep only its last {p} tokens (keep_tail; --keep-tail in the \
             sample binary)"
        )),
    }
}

fn check_options(opts: &SampleOptions) -> Result<()> {
    let bad = |msg: String| Err(Error::Input { msg });
    if opts.temperature.is_nan() || opts.temperature < 0.0 {
        return bad(format!(
            "the temperature must be 0 (greedy) or positive, got {}",
            opts.temperature
        ));
    }
    // written so that NaN fails too
    if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return bad(format!(
            "top-p must be in (0, 1] (1 keeps every token), got {}",
            opts.top_p
        ));
    }
    Ok(())
}

/// The index of the next token: the largest logit at temperature 0, otherwise a draw from
/// softmax(logits / temperature) over the `top_k` largest, cut to the `top_p` nucleus.
///
/// Shapes: logits [V] -> an index in 0..V
pub fn choose_token(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> Result<usize> {
    if logits.iter().any(|x| !x.is_finite()) {
        let what = "the logits of the next token (is the checkpoint broken?)".to_string();
        return Err(Error::NonFinite { what });
    }
    let candidates = largest_first(logits, opts.top_k);
    if opts.temperature == 0.0 {
        return Ok(candidates[0]);
    }
    let weights = tempered_weights(logits, &candidates, f64::from(opts.temperature));
    let keep = nucleus_len(&weights, f64::from(opts.top_p));
    Ok(candidates[draw(&weights[..keep], rng)])
}

/// The indices of the `k` largest logits (all of them when k is 0), largest first; equal logits
/// keep index order, so a tie goes to the lower token id.
///
/// Sorting all V logits costs V log V comparisons per token, little beside the model's work.
fn largest_first(logits: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // a stable sort, descending
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if k > 0 {
        order.truncate(k);
    }
    order
}

/// w_i = exp((l_i - l_max) / temperature) for each candidate (largest first): the softmax's
/// numerators, proportional to the probabilities. In f64, so that the weights of rare tokens
/// do not round to zero before the draw; subtracting the largest logit (softmax does not change)
/// keeps every exponent <= 0, so exp cannot overflow.
fn tempered_weights(logits: &[f32], candidates: &[usize], temperature: f64) -> Vec<f64> {
    let largest = f64::from(logits[candidates[0]]);
    candidates
        .iter()
        .map(|&i| ((f64::from(logits[i]) - largest) / temperature).exp())
        .collect()
}

/// How many of `weights` (largest first) the nucleus keeps: the fewest whose sum reaches
/// `top_p` times the total (Holtzman et al. 2020). At least one: the likeliest token always
/// stays, whatever p.
///
/// `top_p` = 1 keeps all: the running sum ends at exactly the total, as the same additions in
/// the same order make both.
fn nucleus_len(weights: &[f64], top_p: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let mut running = 0.0;
    for (i, w) in weights.iter().enumerate() {
        running += w;
        if running >= top_p * total {
            return i + 1;
        }
    }
    weights.len()
}

/// One draw of an index i with probability weights[i] / sum(weights).
fn draw(weights: &[f64], rng: &mut Rng) -> usize {
    let total: f64 = weights.iter().sum();
    // inverse CDF: the first index whose running sum passes u * total
    let u = uniform_f64(rng) * total;
    let mut running = 0.0;
    for (i, w) in weights.iter().enumerate() {
        running += w;
        if u < running {
            return i;
        }
    }
    // unreachable in exact arithmetic (u < 1, and the running sum ends at `total`); a rounding
    // slip falls back to the likeliest token
    0
}

/// A uniform f64 in [0, 1) from the top 53 bits of one draw (`Rng::uniform` has only 24 bits).
fn uniform_f64(rng: &mut Rng) -> f64 {
    const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
    (rng.next_u64() >> 11) as f64 * TWO_POW_MINUS_53
}

/// Tokens in, printable text out, one token at a time: only whole UTF-8 characters come out,
/// the bytes of a character a token left unfinished wait for the next token. A byte model
/// emits a multi-byte character over several tokens, and a GPT-2 token can end inside one.
pub struct TextStream {
    tokenizer: Tokenizer,
    /// The start of a character whose remaining bytes have not come yet (at most 3 bytes).
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new(tokenizer: Tokenizer) -> TextStream {
        TextStream {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The complete characters that `token` finishes. Bytes that can never be UTF-8 come out as
    /// U+FFFD, as `Tokenizer::decode` shows them.
    ///
    /// Errors: a token outside the tokenizer's vocabulary (`Error::Input`).
    pub fn push(&mut self, token: u32) -> Result<String> {
        let bytes = self
            .tokenizer
            .decode_raw(&[token])
            .map_err(|e| Error::Input {
                msg: format!("{e}: the model and the tokenizer do not match"),
            })?;
        self.pending.extend(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return Ok(text);
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked"));
                    match e.error_len() {
                        // an unfinished character at the end: keep it for the next token
                        None => {
                            self.pending.drain(..valid);
                            return Ok(text);
                        }
                        // bytes no continuation can mend
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end: an unfinished character, shown as U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> Model {
        Model::new(&Config::tiny(), 7).unwrap()
    }

    fn opts(temperature: f32, top_k: usize, seed: u64, n: usize) -> SampleOptions {
        SampleOptions {
            temperature,
            top_k,
            seed,
            max_new_tokens: n,
            ..SampleOptions::default()
        }
    }

    fn run(model: &Model, prompt: &[u32], o: &SampleOptions) -> Result<Vec<u32>> {
        generate(model, &Forward::eval(), prompt, o)
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
        let a = run(&model, &prompt, &opts(1.0, 0, 0, 20)).unwrap();
        let b = run(&model, &prompt, &opts(1.0, 0, 0, 20)).unwrap();
        let c = run(&model, &prompt, &opts(1.0, 0, 1, 20)).unwrap();
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
    fn temperature_zero_takes_the_argmax_of_the_full_forward_at_every_step() {
        let model = tiny_model();
        let prompt = [5, 6, 7, 8];
        let tokens = run(&model, &prompt, &opts(0.0, 0, 0, 5)).unwrap();
        let mut context = prompt.to_vec();
        for &token in &tokens {
            let logits = full_forward_logits(&model, &Forward::eval(), &context).unwrap();
            assert_eq!(token as usize, argmax(&logits), "after {context:?}");
            context.push(token);
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let model = tiny_model();
        let prompt = [9, 10, 11];
        let greedy = run(&model, &prompt, &opts(0.0, 0, 0, 8)).unwrap();
        for seed in [0, 1, 2] {
            let top1 = run(&model, &prompt, &opts(1.5, 1, seed, 8)).unwrap();
            assert_eq!(top1, greedy, "seed {seed}");
        }
    }

    #[test]
    fn top_k_draws_only_among_the_k_largest_logits() {
        let model = tiny_model();
        let k = 3;
        let mut context = vec![4, 2];
        let tokens = run(&model, &context, &opts(2.0, k, 11, 6)).unwrap();
        for &token in &tokens {
            let logits = full_forward_logits(&model, &Forward::eval(), &context).unwrap();
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
    fn the_nucleus_is_the_smallest_set_whose_mass_reaches_p() {
        // probabilities 1/2, 1/4, 1/8, 1/8 (dyadic, so every partial sum is exact):
        // partial sums 0.5, 0.75, 0.875, 1
        let w = [0.5, 0.25, 0.125, 0.125];
        assert_eq!(nucleus_len(&w, 0.3), 1);
        assert_eq!(nucleus_len(&w, 0.5), 1); // reaching p exactly is enough
        assert_eq!(nucleus_len(&w, 0.6), 2);
        assert_eq!(nucleus_len(&w, 0.75), 2);
        assert_eq!(nucleus_len(&w, 0.8), 3);
        assert_eq!(nucleus_len(&w, 1.0), 4);
        // weights need not be normalised: the same cut on 8, 4, 2, 2
        assert_eq!(nucleus_len(&[8.0, 4.0, 2.0, 2.0], 0.6), 2);
    }

    #[test]
    fn top_p_draws_only_from_the_nucleus_in_proportion() {
        // logits ln of 1/2, 1/4, 1/8, 1/8: at temperature 1 and p = 0.6 the nucleus is tokens
        // 0 and 1, drawn as 1/2 : 1/4, so token 1 has probability (1/4) / (3/4) = 1/3
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        let o = SampleOptions {
            top_p: 0.6,
            ..SampleOptions::default()
        };
        let mut rng = Rng::new(3);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[choose_token(&logits, &o, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        // standard error sqrt(p (1 - p) / n) < 0.0034; allow 5 of them
        let freq = counts[1] as f64 / n as f64;
        assert!((freq - 1.0 / 3.0).abs() < 0.017, "{freq}");
    }

    #[test]
    fn draws_follow_the_softmax_of_logits_over_temperature() {
        // logits [0, ln 3]: at temperature 1, p1 = 3 / (1 + 3) = 0.75; at temperature 2 the
        // logits halve, p1 = sqrt 3 / (1 + sqrt 3) = 0.634
        let logits = [0.0, 3f32.ln()];
        let n = 20_000;
        for (temperature, p1) in [(1.0, 0.75), (2.0, 3f64.sqrt() / (1.0 + 3f64.sqrt()))] {
            let mut rng = Rng::new(5);
            let o = opts(temperature, 0, 0, 1);
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
    fn the_stop_token_ends_generation_and_is_not_returned() {
        let model = tiny_model();
        let prompt = [5, 6, 7, 8];
        let greedy = run(&model, &prompt, &opts(0.0, 0, 0, 6)).unwrap();
        // stopping at the third greedy token returns the two before it
        let stop = SampleOptions {
            stop_token: Some(greedy[2]),
            ..opts(0.0, 0, 0, 6)
        };
        let mut generation = Generation::new(&model, &Forward::eval(), &prompt, &stop).unwrap();
        while generation.next_token().unwrap().is_some() {}
        let want = &greedy[..greedy.iter().position(|&t| t == greedy[2]).unwrap()];
        assert_eq!(generation.generated(), want);
        assert!(generation.stopped());
    }

    #[test]
    fn a_long_prompt_is_refused_or_cropped_to_its_tail() {
        let model = tiny_model();
        let seq_len = model.config().seq_len;
        let long: Vec<u32> = (0..seq_len as u32 + 10).map(|i| (i * 37) % 256).collect();
        let err = run(&model, &long, &opts(0.0, 0, 0, 3)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{} tokens long", seq_len + 10)),
            "{msg}"
        );
        assert!(msg.contains(&format!("context of {seq_len}")) && msg.contains("keep-tail"));
        let tail = SampleOptions {
            keep_tail: true,
            ..opts(0.0, 0, 0, 3)
        };
        let tokens = run(&model, &long, &tail).unwrap();
        let cropped = run(&model, &long[10..], &opts(0.0, 0, 0, 3)).unwrap();
        assert_eq!(tokens, cropped);
        let logits = full_forward_logits(&model, &Forward::eval(), &long[10..]).unwrap();
        assert_eq!(tokens[0] as usize, argmax(&logits));
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        let mut rng = Rng::new(0);
        let o = opts(1.0, 0, 0, 1);
        let err = choose_token(&[0.0, f32::NAN], &o, &mut rng).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let model = tiny_model();
        let v = model.config().vocab_size as u32;
        let top_p = |p: f32| SampleOptions {
            top_p: p,
            ..opts(1.0, 0, 0, 4)
        };
        let cases: [(&[u32], SampleOptions, &str); 7] = [
            (&[], opts(1.0, 0, 0, 4), "prompt is empty"),
            (&[1, v, 2], opts(1.0, 0, 0, 4), "position 1"),
            (&[1, 2], opts(-0.5, 0, 0, 4), "temperature"),
            (&[1, 2], opts(f32::NAN, 0, 0, 4), "temperature"),
            (&[1, 2], top_p(0.0), "top-p"),
            (&[1, 2], top_p(1.5), "top-p"),
            (&[1, 2], top_p(f32::NAN), "top-p"),
        ];
        for (prompt, o, needle) in cases {
            for decoding in [Decoding::Cached, Decoding::Recompute] {
                let o = SampleOptions { decoding, ..o };
                let err = run(&model, prompt, &o).unwrap_err();
                assert!(matches!(err, Error::Input { .. }), "{err}");
                assert!(err.to_string().contains(needle), "{err}");
            }
        }
    }

    #[test]
    fn the_text_stream_emits_only_whole_characters() {
        // 'é' = C3 A9 and '€' = E2 82 AC arrive a byte (a token) at a time
        let mut stream = TextStream::new(Tokenizer::Byte);
        let pieces: Vec<String> = [b'h', 0xC3, 0xA9, 0xE2, 0x82, 0xAC, b'!']
            .iter()
            .map(|&b| stream.push(u32::from(b)).unwrap())
            .collect();
        assert_eq!(pieces, ["h", "", "é", "", "", "€", "!"]);
        // a byte that can never start a character is shown as U+FFFD at once
        assert_eq!(stream.push(0xFF).unwrap(), "\u{FFFD}");
        // an unfinished character left at the end
        assert_eq!(stream.push(0xC3).unwrap(), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
        let err = TextStream::new(Tokenizer::Byte).push(256).unwrap_err();
        assert!(
            err.to_string().contains("outside the byte vocabulary"),
            "{err}"
        );
    }
}
