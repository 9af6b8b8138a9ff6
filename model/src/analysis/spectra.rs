//! Spectra of the block's weights (MODEL.md section 11): per head h, the eigenvalues of the
//! query-key matrix W_Q^h W_K^hᵀ and of the value-output matrix W_V^h W_O^h, and of the MLP's
//! W_fc W_proj, at every time t the caller asks for (or every layer of a fixed-depth model).
//!
//! ```text
//! score(x_a, x_b) = (x_a W_Q^h)(x_b W_K^h)ᵀ = x_a (W_Q^h W_K^hᵀ) x_bᵀ  QK: D x D, rank <= hd
//! head output     = softmax(..) X W_V^h W_O^h                          OV: D x D, rank <= hd
//! MLP, gelu ~ linear:  x W_fc W_proj                                   MLP: D x D
//! ```
//!
//! W_Q^h, W_K^h, W_V^h are [D, hd] (head h's columns of its projection, as the attention splits
//! them) and W_O^h is [hd, D] (head h's rows of the output projection). A product A Bᵀ of two
//! [D, hd] matrices has the non-zero eigenvalues of the hd x hd matrix Bᵀ A (if A Bᵀ v = λ v
//! with λ != 0, then w = Bᵀ v != 0 and Bᵀ A w = λ w), and D - hd zeros besides; so each head
//! costs an hd x hd eigen-decomposition, not a D x D one:
//!
//! ```text
//! spec(W_Q^h W_K^hᵀ) \ {0} = spec(W_K^hᵀ W_Q^h)    spec(W_V^h W_O^h) \ {0} = spec(W_O^h W_V^h)
//! ```
//!
//! What is left out, as in the paper: the norms' gains (1 + h(t) G) in front of each branch, the
//! scores' 1/sqrt(hd), GELU's curvature, and the biases.
//!
//! The Llama variant: q, k, v, o split per head the same way. Its QK matrix is the bilinear form
//! of two tokens at the same position: RoPE rotates q and k by angles that depend on the
//! position, so between positions a and b the form is W_Q^h R(b - a) W_K^hᵀ, and R(0) = I. Its
//! "MLP matrix" is W_up W_down: SwiGLU computes down(silu(x W_gate) * (x W_up)), the gate scales
//! each hidden unit, and with the gate held at a constant c the MLP is c x W_up W_down, so
//! W_up W_down is the linear map the gate modulates (up to that per-unit scale).
//!
//! Reference tests: `model/tests/analysis_spectra.rs` (the hd x hd shortcut against the full
//! D x D spectrum, the head split against the attention's own).

use super::linalg::{self, Complex, Matrix};
use crate::block::BlockWeights;
use crate::layers::Linear;
use crate::model::Model;
use crate::{Error, Result, Solver};
use odeflow_autodiff::Tape;
use serde::Serialize;

/// Which matrix a spectrum is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatrixKind {
    /// W_Q^h W_K^hᵀ, one per head.
    Qk,
    /// W_V^h W_O^h, one per head.
    Ov,
    /// W_fc W_proj (GPT-2 block) or W_up W_down (Llama block).
    Mlp,
}

impl MatrixKind {
    pub const ALL: [MatrixKind; 3] = [MatrixKind::Qk, MatrixKind::Ov, MatrixKind::Mlp];

    /// The short name of files and CSV rows.
    pub fn name(self) -> &'static str {
        match self {
            MatrixKind::Qk => "qk",
            MatrixKind::Ov => "ov",
            MatrixKind::Mlp => "mlp",
        }
    }

    /// The product, as plot titles write it.
    pub fn formula(self) -> &'static str {
        match self {
            MatrixKind::Qk => "W_Qʰ W_Kʰᵀ",
            MatrixKind::Ov => "W_Vʰ W_Oʰ",
            MatrixKind::Mlp => "W_fc W_proj",
        }
    }
}

/// The weight matrices of one evaluation of the block, in f64, each [d_in, d_out].
pub struct BlockMatrices {
    pub n_heads: usize,
    /// [D, D] each: the query, key, value and output projections.
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    /// [D, d_ff]: c_fc (GPT-2) or up (Llama).
    pub mlp_in: Matrix,
    /// [d_ff, D]: the MLP's c_proj (GPT-2) or down (Llama).
    pub mlp_out: Matrix,
}

impl BlockMatrices {
    /// The matrices of `w`, the fused c_attn split into Q, K, V as the attention splits it.
    pub fn from_weights(w: &BlockWeights, n_heads: usize) -> Result<BlockMatrices> {
        let (wq, wk, wv, wo, mlp_in, mlp_out) = match w {
            BlockWeights::Gpt(w) => {
                let qkv = matrix(&w.c_attn)?; // [D, 3D]: Q, K, V side by side
                let d = qkv.nrows();
                let part = |i: usize| qkv.columns(i * d, d).into_owned();
                let (q, k, v) = (part(0), part(1), part(2));
                (
                    q,
                    k,
                    v,
                    matrix(&w.attn_proj)?,
                    matrix(&w.c_fc)?,
                    matrix(&w.mlp_proj)?,
                )
            }
            BlockWeights::Llama(w) => (
                matrix(&w.q)?,
                matrix(&w.k)?,
                matrix(&w.v)?,
                matrix(&w.o)?,
                matrix(&w.up)?,
                matrix(&w.down)?,
            ),
        };
        let d = wq.nrows();
        if n_heads == 0 || d % n_heads != 0 {
            let msg = format!("D = {d} does not split into {n_heads} heads");
            return Err(Error::Analysis { msg });
        }
        Ok(BlockMatrices {
            n_heads,
            wq,
            wk,
            wv,
            wo,
            mlp_in,
            mlp_out,
        })
    }

    pub fn d_model(&self) -> usize {
        self.wq.nrows()
    }

    pub fn head_dim(&self) -> usize {
        self.d_model() / self.n_heads
    }

    /// Head h's columns of a [D, D] input projection.
    ///
    /// Shapes: w [D, D] -> [D, hd]
    fn head_columns(&self, w: &Matrix, h: usize) -> Matrix {
        w.columns(h * self.head_dim(), self.head_dim()).into_owned()
    }

    /// The full W_Q^h W_K^hᵀ (the reference the shortcut is tested against).
    ///
    /// Shapes: -> [D, D]
    pub fn qk_full(&self, h: usize) -> Matrix {
        self.head_columns(&self.wq, h) * self.head_columns(&self.wk, h).transpose()
    }

    /// W_K^hᵀ W_Q^h: the non-zero spectrum of `qk_full(h)`.
    ///
    /// Shapes: -> [hd, hd]
    pub fn qk_small(&self, h: usize) -> Matrix {
        self.head_columns(&self.wk, h).transpose() * self.head_columns(&self.wq, h)
    }

    /// Head h's rows of the output projection.
    ///
    /// Shapes: -> [hd, D]
    fn wo_head(&self, h: usize) -> Matrix {
        self.wo
            .rows(h * self.head_dim(), self.head_dim())
            .into_owned()
    }

    /// The full W_V^h W_O^h.
    ///
    /// Shapes: -> [D, D]
    pub fn ov_full(&self, h: usize) -> Matrix {
        self.head_columns(&self.wv, h) * self.wo_head(h)
    }

    /// W_O^h W_V^h: the non-zero spectrum of `ov_full(h)`.
    ///
    /// Shapes: -> [hd, hd]
    pub fn ov_small(&self, h: usize) -> Matrix {
        self.wo_head(h) * self.head_columns(&self.wv, h)
    }

    /// W_fc W_proj (W_up W_down for the Llama block).
    ///
    /// Shapes: -> [D, D]
    pub fn mlp(&self) -> Matrix {
        &self.mlp_in * &self.mlp_out
    }
}

/// A weight matrix of the tape as an f64 matrix.
fn matrix(l: &Linear) -> Result<Matrix> {
    let (rows, cols) = (l.w.shape()[0], l.w.shape()[1]);
    Ok(linalg::from_row_major(
        rows,
        cols,
        &l.w.value().to_f32_vec()?,
    ))
}

/// The eigenvalues of one matrix: sorted by decreasing magnitude (`linalg::eigenvalues`).
#[derive(Clone, Debug)]
pub struct Spectrum {
    pub kind: MatrixKind,
    /// The head, for QK and OV.
    pub head: Option<usize>,
    pub eigenvalues: Vec<Complex<f64>>,
}

/// Every spectrum of one evaluation: H of QK, H of OV, then the MLP's.
pub fn block_spectra(m: &BlockMatrices) -> Result<Vec<Spectrum>> {
    let mut out = Vec::with_capacity(2 * m.n_heads + 1);
    for (kind, of) in [
        (
            MatrixKind::Qk,
            BlockMatrices::qk_small as fn(&BlockMatrices, usize) -> Matrix,
        ),
        (MatrixKind::Ov, BlockMatrices::ov_small),
    ] {
        for h in 0..m.n_heads {
            let what = format!("{} of head {h}", kind.formula());
            let eigenvalues = linalg::eigenvalues(&of(m, h), &what)?;
            out.push(Spectrum {
                kind,
                head: Some(h),
                eigenvalues,
            });
        }
    }
    out.push(Spectrum {
        kind: MatrixKind::Mlp,
        head: None,
        eigenvalues: linalg::eigenvalues(&m.mlp(), MatrixKind::Mlp.formula())?,
    });
    Ok(out)
}

/// What the x axis of a model's spectra is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// The ODE time t in [0, 1] (ODE and re-discretised models).
    Time,
    /// The layer number 1..L of a vanilla GPT-2.
    Layer,
}

impl Axis {
    pub fn label(self) -> &'static str {
        match self {
            Axis::Time => "t",
            Axis::Layer => "layer",
        }
    }
}

/// The spectra of one evaluation: at time t, or of layer t (GPT-2).
#[derive(Clone, Debug)]
pub struct SpectraAt {
    pub t: f64,
    pub spectra: Vec<Spectrum>,
}

/// Numbers that sum up the spectra of one kind at one point, over all its heads.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub max_abs: f64,
    pub mean_abs: f64,
    /// The fraction of the eigenvalues whose real part is positive.
    pub positive_real: f64,
}

impl SpectraAt {
    /// Every eigenvalue of `kind` here, all heads together.
    pub fn eigenvalues(&self, kind: MatrixKind) -> impl Iterator<Item = Complex<f64>> + '_ {
        self.spectra
            .iter()
            .filter(move |s| s.kind == kind)
            .flat_map(|s| s.eigenvalues.iter().copied())
    }

    pub fn summary(&self, kind: MatrixKind) -> Summary {
        let values: Vec<Complex<f64>> = self.eigenvalues(kind).collect();
        let n = values.len().max(1) as f64;
        Summary {
            max_abs: values.iter().map(|z| z.norm()).fold(0.0, f64::max),
            mean_abs: values.iter().map(|z| z.norm()).sum::<f64>() / n,
            positive_real: values.iter().filter(|z| z.re > 0.0).count() as f64 / n,
        }
    }
}

/// Where a model's spectra are taken: at times of an ODE model, or at its layers.
#[derive(Clone, Debug, PartialEq)]
pub enum Points {
    /// The distinct times the forward solve evaluates F at (an ODE model), or every layer (a
    /// fixed-depth model, which then needs Euler and its own depth).
    SolverGrid { solver: Solver, steps: usize },
    /// These times in [0, 1]: the weights are functions of t (ODE models only).
    Times(Vec<f64>),
}

/// The spectra of `model` at `points`, in order; `progress(done, total)` after each point.
pub fn model_spectra(
    model: &Model,
    points: &Points,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Axis, Vec<SpectraAt>)> {
    let (axis, weights) = model_weights(model, points)?;
    let n_heads = model.config().n_heads;
    let mut out = Vec::with_capacity(weights.len());
    for (i, (t, w)) in weights.iter().enumerate() {
        let spectra = block_spectra(&BlockMatrices::from_weights(w, n_heads)?)?;
        out.push(SpectraAt { t: *t, spectra });
        progress(i + 1, weights.len());
    }
    Ok((axis, out))
}

/// The block's weights at `points`, each with its time (or layer number).
pub fn model_weights(model: &Model, points: &Points) -> Result<(Axis, Vec<(f64, BlockWeights)>)> {
    check_points(model, points)?;
    let tape = Tape::new();
    tape.no_grad(|| match (model, points) {
        (Model::Ode(m), Points::SolverGrid { solver, steps }) => {
            let ts = solver.eval_times(*steps);
            Ok((
                Axis::Time,
                ts.iter().copied().zip(m.weights_at(&tape, &ts)?).collect(),
            ))
        }
        (Model::Ode(m), Points::Times(ts)) => Ok((
            Axis::Time,
            ts.iter().copied().zip(m.weights_at(&tape, ts)?).collect(),
        )),
        (Model::Discrete(_) | Model::Gpt2(_), Points::Times(_)) => Err(fixed_depth_error(model)),
        (Model::Discrete(m), Points::SolverGrid { .. }) => {
            let layers = m.layer_weights(&tape)?;
            let n = layers.len() as f64;
            let at = |(i, w)| ((i + 1) as f64 / n, w);
            Ok((Axis::Time, layers.into_iter().enumerate().map(at).collect()))
        }
        (Model::Gpt2(m), Points::SolverGrid { .. }) => {
            let layers = m.layer_weights(&tape)?;
            let at = |(i, w)| ((i + 1) as f64, w);
            Ok((
                Axis::Layer,
                layers.into_iter().enumerate().map(at).collect(),
            ))
        }
    })
}

/// Whether `model` can be analysed at `points`: times only for an ODE model, and in [0, 1].
pub fn check_points(model: &Model, points: &Points) -> Result<()> {
    match (model, points) {
        (Model::Ode(_), Points::Times(ts)) => check_times(ts),
        (_, Points::Times(_)) => Err(fixed_depth_error(model)),
        _ => Ok(()),
    }
}

fn fixed_depth_error(model: &Model) -> Error {
    let msg = format!(
        "this {} model has fixed layers, not weights at any t: its spectra are per layer \
         (leave out --times and --grid)",
        if model.config().discrete {
            "re-discretised"
        } else {
            model.config().model.name()
        }
    );
    Error::Input { msg }
}

fn check_times(ts: &[f64]) -> Result<()> {
    if ts.is_empty() {
        let msg = "no times given: give at least one t in [0, 1]".to_string();
        return Err(Error::Input { msg });
    }
    if let Some(t) = ts.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        let msg = format!("t = {t} is outside [0, 1], the interval the ODE is solved over");
        return Err(Error::Input { msg });
    }
    Ok(())
}
