//! Incremental decoding: a key/value cache per evaluation of the block, so that each new token
//! costs the work of one position instead of a whole forward pass (`docs/12-generation.md`).
//!
//! A causal transformer's state at position j depends only on the tokens 0..=j. Everything a
//! layer does is per position (norms, projections, MLP, the residual and solver updates) except
//! attention, and attention at j reads only the keys and values of positions <= j. So when a
//! token is appended, the states of the earlier positions do not change: the only thing the new
//! position needs from them is, at every attention it passes through, their keys and values.
//! Keep those (`KvCache`, one per attention evaluation) and a new token runs alone through the
//! model: about 2 P_w FLOPs for the P_w weights it multiplies, plus the attention over the n
//! cached positions, where the whole forward would redo all n positions.
//!
//! For an ODE model the "layers" are the field's evaluations. The weights W(t) at each stage
//! time are fixed once the solver and step count are chosen, so the decoder generates them once
//! (`NeuralOde::weights_at` at every stage time) and keeps one cache per evaluation: per step
//! *and* per stage for a Runge-Kutta solver, because each stage attends over its own stage
//! states X_s = X + dt sum_j a_sj k_j, which differ from stage to stage even where two stages
//! share a time (RK4's step end and the next step's start). Those stage states are per-position
//! combinations of per-position slopes of causal attentions, so past positions' stage states do
//! not depend on future tokens either, and the cache is exact: the decoder's logits are the
//! full forward's up to the order of the attention's f32 additions (a test holds them to it).
//! Memory: 2 n D numbers per evaluation, NFE of them (L for Euler, 4 L for RK4).
//!
//! A re-discretised model is the Euler solve with its layers as the steps; GPT-2 runs its
//! sequential layers. All three start from the `BlockWeights` of each evaluation, so the block
//! math is the full forward's own (`block::field_cached`, `block::sequential_block_cached`).
//!
//! The context window. The learned position embeddings (and the training) cover positions
//! 0..P, P = `seq_len`. Past P the window must move, and with absolute positions moving it by
//! one token would change every cached position's embedding: each token would cost a whole
//! forward. Instead the window jumps by half of it (`window_start`): when the text outgrows P,
//! the window moves on by P/2, and the decoder clears its caches and re-prefills the new
//! window (the last P - P/2 tokens of the old one and the new token) in one forward, then
//! decodes one position per token again until the window is full. That is exact (the
//! reference path, `sample::full_forward_logits`, sees the same windows), costs one prefill of
//! about P/2 positions per P/2 tokens (about one extra position of work per token, amortised),
//! and leaves the model between P - P/2 + 1 and P tokens of context. Decoding runs with
//! recording off, on the device the model's parameters are on.

use crate::block::{self, BlockWeights};
use crate::layers::KvCache;
use crate::model::{Forward, Model};
use crate::solver::tableau::{rk_step, Tableau};
use crate::solver::Solver;
use crate::{Error, Result};
use odeflow_autodiff::{Tape, Var};
use odeflow_runtime::Tensor;

/// Where, in a text of `n` tokens (n >= 1), the context window of the next token's prediction
/// starts: 0 while the text fits the P = `seq_len` positions, then a jump of P/2 (at least 1)
/// each time it outgrows them, so the window holds between P - P/2 + 1 and P tokens.
///
/// ```text
/// P = 8:  n = 1..=8 -> 0;  n = 9..=12 -> 4;  n = 13..=16 -> 8;  ...
/// ```
pub fn window_start(n: usize, seq_len: usize) -> usize {
    if n <= seq_len {
        return 0;
    }
    let jump = (seq_len / 2).max(1);
    // the fewest jumps that bring n - start down to seq_len or less
    (n - seq_len).div_ceil(jump) * jump
}

/// How the positions pass through the model's depth.
enum Stack {
    /// An ODE solve, or a re-discretised model (Euler, its layers as the steps): step i
    /// advances the state by `tableau`, its stage s with the weights `steps[i][s]`.
    Solve {
        tableau: &'static Tableau,
        dt: f32,
        steps: Vec<Vec<BlockWeights>>,
    },
    /// GPT-2's sequential layers.
    Sequential(Vec<BlockWeights>),
}

impl Stack {
    /// Block evaluations per position: one cache each.
    fn evaluations(&self) -> usize {
        match self {
            Stack::Solve { tableau, steps, .. } => tableau.stages() * steps.len(),
            Stack::Sequential(layers) => layers.len(),
        }
    }
}

/// An incremental decoder of one sequence (B = 1): the weights of every evaluation, generated
/// once, and the keys and values of every position so far at each of them.
///
/// `push` appends tokens and returns the logits of the token after the last one. The caches grow
/// by one position per pushed token, up to the model's `seq_len`; `clear` empties them (a new
/// window). After an error the decoder is cleared, so a half-appended position never lingers.
pub struct Decoder<'m> {
    model: &'m Model,
    /// Holds the weights; recording stays off, so it never grows.
    tape: Tape,
    stack: Stack,
    /// One per evaluation, in the order `stack` runs them.
    caches: Vec<KvCache>,
    /// Positions held (every cache holds this many).
    len: usize,
}

impl<'m> Decoder<'m> {
    /// A decoder of `model` run as `fwd` says: its solver and step count for an ODE model (the
    /// model's own depth otherwise; `Model::check_forward` refuses anything else). No dropout.
    pub fn new(model: &'m Model, fwd: &Forward) -> Result<Decoder<'m>> {
        model.check_forward(fwd)?;
        if fwd.dropout_seed.is_some() {
            let msg = "decoding is evaluation: pass a Forward without a dropout seed".into();
            return Err(Error::Input { msg });
        }
        let tape = Tape::new();
        let stack = tape.no_grad(|| stack_of(model, &tape, fwd))?;
        let caches = vec![KvCache::new(); stack.evaluations()];
        Ok(Decoder {
            model,
            tape,
            stack,
            caches,
            len: 0,
        })
    }

    /// Positions held in the caches.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Attention evaluations per position, each with its own cache: the NFE of an ODE solve,
    /// the layer count otherwise.
    pub fn evaluations(&self) -> usize {
        self.caches.len()
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.caches.iter_mut().for_each(KvCache::clear);
        self.len = 0;
    }

    /// Appends `tokens` at positions len..len + m and returns the logits of the token after the
    /// last one. The first push of a window is the prefill (m = the prompt's length); each
    /// decoding step pushes one token.
    ///
    /// Errors (`Error::Input`): no tokens, a token outside the vocabulary, or more positions
    /// than the model's context (clear and re-prefill a later window, `window_start`).
    ///
    /// Shapes: tokens [m] -> logits [V]
    pub fn push(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check(tokens)?;
        let logits = self.run(tokens);
        match logits {
            Ok(logits) => {
                self.len += tokens.len();
                Ok(logits)
            }
            Err(e) => {
                self.clear();
                Err(e)
            }
        }
    }

    fn check(&self, tokens: &[u32]) -> Result<()> {
        let cfg = self.model.config();
        let bad = |msg: String| Err(Error::Input { msg });
        if tokens.is_empty() {
            return bad("push needs at least one token".into());
        }
        let v = cfg.vocab_size;
        if let Some((i, id)) = tokens.iter().enumerate().find(|&(_, &id)| id as usize >= v) {
            return bad(format!(
                "token {id} (at {i} of the {} pushed) is outside the model's vocabulary of {v} \
                 tokens",
                tokens.len()
            ));
        }
        if self.len + tokens.len() > cfg.seq_len {
            return bad(format!(
                "the decoder holds {} positions, and {} more would pass the model's context of \
                 {}; clear it and prefill a later window (decode::window_start)",
                self.len,
                tokens.len(),
                cfg.seq_len
            ));
        }
        Ok(())
    }

    /// The new positions through the stem, the stack and the head; only the last one's logits
    /// are formed (the others' would be thrown away).
    ///
    /// Shapes: tokens [m] -> logits [V]
    fn run(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let m = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), &[1, m])?.to_device(self.model.device())?;
        let (stem, n_heads) = (self.model.stem(), self.model.config().n_heads);
        let Decoder {
            tape,
            stack,
            caches,
            len,
            ..
        } = self;
        let logits = tape.no_grad(|| -> Result<Var> {
            let x = stem.embed_from(tape, &ids, *len)?; // [1, m, D]
            let x = run_stack(stack, caches, x, n_heads)?;
            Ok(stem.logits(tape, &x.narrow(1, m - 1, 1)?)?) // [1, 1, V]
        })?;
        Ok(logits.value().to_f32_vec()?)
    }
}

/// The weights of every evaluation of `model` run as `fwd` says, generated on `tape`.
fn stack_of(model: &Model, tape: &Tape, fwd: &Forward) -> Result<Stack> {
    let cfg = model.config();
    Ok(match model {
        Model::Ode(ode) => {
            let (solver, n) = (fwd.solver, fwd.steps.unwrap_or(cfg.n_steps));
            let times = solver.eval_times(n);
            let weights = ode.weights_at(tape, &times)?;
            // each stage's W(t), looked up among the distinct times as the solver does
            let stage = |i: usize, s: usize| {
                let t = solver.stage_time(i, s, n);
                weights[times.partition_point(|&u| u < t)].clone()
            };
            let stages = solver.tableau().stages();
            let steps = (0..n).map(|i| (0..stages).map(|s| stage(i, s)).collect());
            Stack::Solve {
                tableau: solver.tableau(),
                dt: 1.0 / n as f32,
                steps: steps.collect(),
            }
        }
        Model::Discrete(discrete) => {
            let layers = discrete.layer_weights(tape)?;
            Stack::Solve {
                tableau: Solver::Euler.tableau(),
                dt: 1.0 / layers.len() as f32,
                steps: layers.into_iter().map(|w| vec![w]).collect(),
            }
        }
        Model::Gpt2(gpt2) => Stack::Sequential(gpt2.layer_weights(tape)?),
    })
}

/// The new positions through every evaluation, each attending over its own cache.
///
/// Shapes: x [1, m, D] -> [1, m, D]
fn run_stack(
    stack: &Stack,
    caches: &mut [KvCache],
    x: Var,
    n_heads: usize,
) -> odeflow_autodiff::Result<Var> {
    match stack {
        Stack::Solve { tableau, dt, steps } => {
            let per_step = caches.chunks_mut(tableau.stages());
            steps
                .iter()
                .zip(per_step)
                .try_fold(x, |x, (weights, caches)| {
                    rk_step(tableau, &x, *dt, |s, xs| {
                        block::field_cached(xs, &weights[s], n_heads, &mut caches[s])
                    })
                })
        }
        Stack::Sequential(layers) => layers.iter().zip(caches).try_fold(x, |x, (w, cache)| {
            block::sequential_block_cached(&x, w, n_heads, cache)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_jumps_by_half_and_never_exceeds_the_context() {
        assert_eq!(window_start(1, 8), 0);
        assert_eq!(window_start(8, 8), 0);
        assert_eq!(window_start(9, 8), 4);
        assert_eq!(window_start(12, 8), 4);
        assert_eq!(window_start(13, 8), 8);
        // P = 1: the window is the last token
        assert_eq!(window_start(5, 1), 4);
        for p in [1, 2, 7, 64] {
            for n in 1..5 * p {
                let len = n - window_start(n, p);
                assert!(len >= 1 && len <= p, "n {n}, P {p}: {len}");
                if n > p {
                    assert!(len > p - (p / 2).max(1), "n {n}, P {p}: {len}");
                }
            }
        }
    }
}
