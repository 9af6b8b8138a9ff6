"""The PyTorch peer of `train_step` (CPU) and `gpu_train_step` (CUDA): one training step of the
same models, in eager PyTorch.

Install (once, from the workspace root; PyPI serves a CUDA build of torch, about 5 GB, that
runs on the CPU as it is):

    python3 -m venv bench/peers/.venv
    bench/peers/.venv/bin/pip install torch numpy

Run (from the workspace root):

    bench/peers/.venv/bin/python bench/peers/torch_train_step.py [--small] [--reps 5]
        [--threads 2] [--no-checkpoint] [--fused-adamw] [--json]

and on a GPU, the peer of `gpu_train_step` (bench/gpu/check.sh runs it so): the two small cases
only, at batch B, in bf16 autocast (matrix products and SDPA's flash attention in bf16 on the
tensor cores, norms, softmax and the loss in f32, the parameters and AdamW in f32, as the Rust
`Precision::Bf16` does), each phase ended by torch.cuda.synchronize:

    python3 bench/peers/torch_train_step.py --device cuda --bf16 --only-small --batch 8 \
        --fused-adamw --reps 3 --json

The cases, shapes, parameter counts, initialisation, dropout and optimiser settings are those
of `bench/src/bin/train_step.rs` (see `model/src/config.rs` and MODEL.md); each model's
parameter count is checked against `Config::param_count`, mirrored below by the same
arithmetic. One step = forward with the loss, backward, then global-norm clipping, AdamW and
zero_grad, each phase timed with `time.perf_counter` (CPU ops are synchronous). Each figure is
the best of --reps steps after one warm-up step; `step ms` is the sum of the three bests, as in
the Rust table. --json prints one JSON object per case instead of the markdown table. On CUDA
the rows also give the model FLOPs utilisation, by the count of gpu_train_step.rs: PaLM's
6 (L 12 D^2 + D V) + 12 L D T per token, over the H200's dense bf16 peak.

Like the Rust models, each Euler step (each GPT-2 layer) is checkpointed by default: its forward
is recomputed in the backward pass, as the paper's reference does. --no-checkpoint keeps every
activation instead (what a plain eager training loop does), which skips that recomputation.

Notation as in MODEL.md: B batch, T tokens, D width, H heads, hd = D/H, V vocabulary, L steps,
E hypernetwork width, S sinusoid count, N evaluation times of one solve.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

INIT_STD = 0.02  # every weight matrix (MODEL.md section 3)
BIAS_INIT_STD = 1e-4  # the B_k of b(t)
ODE_POSITION_STD = 0.01
LLAMA_TOKEN_STD = 1.0
LAYER_NORM_EPS = 1e-5
TEMPORAL_RMS_EPS = 1e-6
FINAL_RMS_EPS = 1e-5
TIME_BASE = 10000.0  # phi(t): w_k = TIME_BASE^(-k/S)
TIME_SCALE = 1000.0  # phi(t): sin(TIME_SCALE t w_k)
ROPE_BASE = 10000.0
# the H200's dense bf16 tensor-core peak, FLOP/s (gpu_train_step.rs's PEAK_BF16_FLOPS)
PEAK_BF16_FLOPS = 989.4e12


@dataclass
class Config:
    """The fields of the Rust `Config` that fix shapes; defaults are `Config::tiny()`."""

    model: str = "neural-ode"  # neural-ode | llama-ode | gpt2
    vocab_size: int = 256  # V
    seq_len: int = 64  # T, also the number of position embeddings
    d_model: int = 128  # D
    n_heads: int = 4  # H
    n_steps: int = 4  # L: Euler steps, or GPT-2 layers
    time_embed_dim: int = 8  # E
    sinusoidal_dim: int = 16  # S
    dropout: float = 0.0

    @property
    def tied(self):
        # `Config::with_model`: only the Llama variant unties its head
        return self.model != "llama-ode"

    @property
    def ff_width(self):
        # 4D, or SwiGLU's 8D/3 rounded up to a multiple of 64
        if self.model == "llama-ode":
            return math.ceil(8 * self.d_model / 3 / 64) * 64
        return 4 * self.d_model


def small_config(model):
    """The `--small` case of train_step.rs: the `small` preset at T = 1024 (dropout 0.1)."""
    return Config(model, 50257, 1024, 768, 12, 12, 20, 128, 0.1)


def rust_param_count(cfg):
    """`Config::param_count` of model/src/config.rs, term by term."""
    v, d, f, e = cfg.vocab_size, cfg.d_model, cfg.ff_width, cfg.time_embed_dim
    hyper = (2 * cfg.sinusoidal_dim + 1) * e + e + e * e + e
    norm = 2 * e * d + hyper
    head = 0 if cfg.tied else d * v

    def temporal(d_in, d_out, bias):
        return (e + 1) * d_in * d_out + (e * d_out if bias else 0) + hyper

    if cfg.model == "neural-ode":
        lins = [temporal(d, 3 * d, 1), temporal(d, d, 1), temporal(d, f, 1), temporal(f, d, 1)]
        return v * d + cfg.seq_len * d + sum(lins) + 2 * norm + 2 * d + head
    if cfg.model == "llama-ode":
        lins = 4 * temporal(d, d, 0) + 2 * temporal(d, f, 0) + temporal(f, d, 0)
        return v * d + lins + 2 * norm + d + head
    layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    return v * d + cfg.seq_len * d + cfg.n_steps * layer + 2 * d + head


# the mirror must reproduce MODEL.md section 8 before its figures are trusted
assert rust_param_count(small_config("neural-ode")) == 188_254_152
assert rust_param_count(small_config("gpt2")) == 124_439_808


def normal(shape, std):
    return nn.Parameter(torch.randn(shape) * std)


def zeros(shape):
    return nn.Parameter(torch.zeros(shape))


def linear(x, w, b=None):
    """y = x W + b with W [d_in, d_out], the Rust layout. F.linear wants [d_out, d_in]; W.t() is
    a view, so this is one GEMM with the bias folded in, as nn.Linear would do."""
    return F.linear(x, w.t(), b)


def phi_rows(ts, s, device):
    """phi(t) of MODEL.md section 2, one row per t, computed in f64 on the CPU and rounded once.

    Shapes: ts [N] -> [N, 2S+1]"""
    t = torch.tensor(ts, dtype=torch.float64)[:, None]
    w = TIME_BASE ** (-torch.arange(s, dtype=torch.float64) / s)
    angle = TIME_SCALE * t * w
    return torch.cat([t, angle.sin(), angle.cos()], dim=1).float().to(device)


class HyperNet(nn.Module):
    """h(t) = lin2(silu(lin1(phi(t)))), lin1: (2S+1) -> E, lin2: E -> E."""

    def __init__(self, phi_dim, e):
        super().__init__()
        self.lin1 = nn.ParameterList([normal((phi_dim, e), INIT_STD), zeros(e)])
        self.lin2 = nn.ParameterList([normal((e, e), INIT_STD), zeros(e)])

    def forward(self, phi):
        """Shapes: phi [N, 2S+1] -> h [N, E]"""
        return linear(F.silu(linear(phi, *self.lin1)), *self.lin2)


class TemporalLinear(nn.Module):
    """W(t) = W0 + sum_k h_k(t) W_k, b(t) = sum_k h_k(t) B_k (MODEL.md section 3)."""

    def __init__(self, d_in, d_out, phi_dim, e, bias):
        super().__init__()
        self.hyper = HyperNet(phi_dim, e)
        # F = [W0; W_1 .. W_E]: [E+1, d_in, d_out], with W0 = 0 at the start
        w_k = torch.randn(e, d_in, d_out) * INIT_STD
        self.weight = nn.Parameter(torch.cat([torch.zeros(1, d_in, d_out), w_k]))
        self.bias = normal((e, d_out), BIAS_INIT_STD) if bias else None

    def at(self, phi):
        """(W(t_j), b(t_j)) at every time of phi: one [N, E+1] x [E+1, d_in d_out] GEMM.

        Shapes: phi [N, 2S+1] -> N x (w [d_in, d_out], b [d_out] or None)"""
        e1, d_in, d_out = self.weight.shape
        h = self.hyper(phi)  # [N, E]
        ones = torch.ones(len(h), 1, device=h.device, dtype=h.dtype)
        rows = torch.cat([ones, h], dim=1)  # [N, E+1]: [1, h(t_j)]
        w = (rows @ self.weight.view(e1, d_in * d_out)).view(-1, d_in, d_out)
        # unbind, not w[j]: its backward stacks the N gradients in one copy, where N separate
        # index backwards would each write a zero-filled [N, d_in, d_out] tensor
        ws = w.unbind(0)
        bs = (h @ self.bias).unbind(0) if self.bias is not None else [None] * len(h)
        return list(zip(ws, bs))


class TemporalNorm(nn.Module):
    """(1 + h(t) G) * normalise(x) + h(t) Bn, G = Bn = 0 at the start (MODEL.md section 4)."""

    def __init__(self, d, phi_dim, e):
        super().__init__()
        self.hyper = HyperNet(phi_dim, e)
        self.gain = zeros((e, d))
        self.shift = zeros((e, d))

    def at(self, phi):
        """Shapes: phi [N, 2S+1] -> N x (weight [D], bias [D])"""
        h = self.hyper(phi)
        return list(zip((1 + h @ self.gain).unbind(0), (h @ self.shift).unbind(0)))


def layer_norm(x, wb, eps=LAYER_NORM_EPS):
    return F.layer_norm(x, x.shape[-1:], wb[0], wb[1], eps)


def rms_norm(x, wb, eps=TEMPORAL_RMS_EPS):
    return F.rms_norm(x, x.shape[-1:], wb[0], eps) + wb[1]


def attention(q, k, v, n_heads):
    """Causal softmax attention, scores scaled by 1/sqrt(hd), no attention dropout.

    SDPA, not a hand-written masked softmax: it is what nanoGPT (the straightforward eager
    model this table is a peer of) calls, and on the CPU it runs a fused flash-style kernel.
    The Rust runtime's attention is the materialised reference (a [T, T] score matrix per
    head), so this column is the peer a fused kernel will have to meet.

    Shapes: q, k, v [B, T, D] -> [B, T, D]"""
    b, t, d = q.shape
    heads = [z.view(b, t, n_heads, d // n_heads).transpose(1, 2) for z in (q, k, v)]
    y = F.scaled_dot_product_attention(*heads, is_causal=True)  # [B, H, T, hd]
    return y.transpose(1, 2).reshape(b, t, d)


def gpt_attention(x, c_attn, c_proj, n_heads):
    """Shapes: x [B, T, D] (normalised) -> [B, T, D]; qkv [B, T, 3D] split as [3, H, hd]"""
    q, k, v = linear(x, *c_attn).chunk(3, dim=-1)
    return linear(attention(q, k, v, n_heads), *c_proj)


def gpt_mlp(x, c_fc, c_proj):
    """Shapes: x [B, T, D] -> [B, T, D] (hidden [B, T, 4D])"""
    return linear(F.gelu(linear(x, *c_fc), approximate="tanh"), *c_proj)


def rope_tables(t, hd, device):
    """cos, sin of pos theta_k, theta_k = base^(-2k/hd), each frequency on both halves.

    Shapes: -> cos, sin [T, hd]"""
    k = torch.arange(hd, dtype=torch.float64) % (hd // 2)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * ROPE_BASE ** (-2 * k / hd)
    return angle.cos().float().to(device), angle.sin().float().to(device)


def rope(x, cos, sin):
    """x cos + rotate_half(x) sin, rotate_half([x1, x2]) = [-x2, x1].

    Shapes: x [B, H, T, hd] -> [B, H, T, hd]"""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def llama_attention(x, q, k, v, o, n_heads):
    """Shapes: x [B, T, D] (normalised) -> [B, T, D]"""
    b, t, d = x.shape
    cos, sin = rope_tables(t, d // n_heads, x.device)

    def heads(w):
        return linear(x, *w).view(b, t, n_heads, d // n_heads).transpose(1, 2)

    qh, kh = rope(heads(q), cos, sin), rope(heads(k), cos, sin)
    y = F.scaled_dot_product_attention(qh, kh, heads(v), is_causal=True)
    return linear(y.transpose(1, 2).reshape(b, t, d), *o)


def swiglu(x, gate, up, down):
    """down(silu(gate x) * up x). Shapes: x [B, T, D] -> [B, T, D]"""
    return linear(F.silu(linear(x, *gate)) * linear(x, *up), *down)


def dropout(x, p):
    return F.dropout(x, p) if p > 0 else x


class NeuralOde(nn.Module):
    """The neural ODE transformer, GPT-2 or Llama field (MODEL.md sections 1-6)."""

    GPT_MODULES = ["ln_a", "c_attn", "attn_proj", "ln_m", "c_fc", "mlp_proj"]
    LLAMA_MODULES = ["norm_attn", "q", "k", "v", "o", "norm_mlp", "gate", "up", "down"]

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        llama = cfg.model == "llama-ode"
        d, f, e = cfg.d_model, cfg.ff_width, cfg.time_embed_dim
        p = 2 * cfg.sinusoidal_dim + 1
        self.wte = normal((cfg.vocab_size, d), LLAMA_TOKEN_STD if llama else INIT_STD)
        if llama:
            self.norm_f = nn.Parameter(torch.ones(d))  # plain RMSNorm, no bias
            self.lm_head = normal((d, cfg.vocab_size), INIT_STD)
            dims = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d),
                    "gate": (d, f), "up": (d, f), "down": (f, d)}
            names = self.LLAMA_MODULES
        else:
            self.wpe = normal((cfg.seq_len, d), ODE_POSITION_STD)
            self.ln_f = nn.ParameterList([torch.ones(d), torch.zeros(d)])
            dims = {"c_attn": (d, 3 * d), "attn_proj": (d, d), "c_fc": (d, f),
                    "mlp_proj": (f, d)}
            names = self.GPT_MODULES
        # each module its own hypernetwork; the Llama linears have no b(t)
        modules = {n: TemporalLinear(*dims[n], p, e, bias=not llama) for n in dims}
        modules.update({n: TemporalNorm(d, p, e) for n in names if n not in dims})
        # in the order `field` unpacks them
        self.block = nn.ModuleDict({n: modules[n] for n in names})

    def forward(self, ids, use_checkpoint):
        """Shapes: ids [B, T] -> logits [B, T, V]"""
        cfg = self.cfg
        n = cfg.n_steps
        ts = [(i + 1) / n for i in range(n)]  # right-end Euler: t_i = (i + 1) dt
        phi = phi_rows(ts, cfg.sinusoidal_dim, self.wte.device)
        # every module's weights at all N times, outside the checkpointed steps (as in Rust)
        per_module = [self.block[m].at(phi) for m in self.block]
        steps = list(zip(*per_module))  # N x (one weight pair per module)
        x = F.embedding(ids, self.wte)
        if cfg.model == "neural-ode":
            x = x + self.wpe[: ids.shape[1]]
        x = dropout(x, cfg.dropout)
        for w in steps:
            if use_checkpoint:
                x = checkpoint(self.euler_step, x, w, 1.0 / n, use_reentrant=False)
            else:
                x = self.euler_step(x, w, 1.0 / n)
        if cfg.model == "llama-ode":
            return linear(F.rms_norm(x, x.shape[-1:], self.norm_f, FINAL_RMS_EPS), self.lm_head)
        return linear(layer_norm(x, self.ln_f), self.wte.t())  # tied: x W_te^T

    def euler_step(self, x, w, dt):
        """X_{i+1} = X_i + dt F(X_i, t_i). Shapes: x [B, T, D] -> [B, T, D]"""
        return x + dt * self.field(x, w)

    def field(self, x, w):
        """F(x, t) = Attn(N1(x)) + MLP(N2(x)), both branches reading x (parallel block)."""
        h, p = self.cfg.n_heads, self.cfg.dropout
        if self.cfg.model == "llama-ode":
            norm_attn, q, k, v, o, norm_mlp, gate, up, down = w
            attn = llama_attention(rms_norm(x, norm_attn), q, k, v, o, h)
            mlp = swiglu(rms_norm(x, norm_mlp), gate, up, down)
        else:
            ln_a, c_attn, attn_proj, ln_m, c_fc, mlp_proj = w
            attn = gpt_attention(layer_norm(x, ln_a), c_attn, attn_proj, h)
            mlp = gpt_mlp(layer_norm(x, ln_m), c_fc, mlp_proj)
        return dropout(attn, p) + dropout(mlp, p)


class Gpt2Layer(nn.Module):
    """x += attn(ln_1(x)); x += mlp(ln_2(x)) (MODEL.md section 7)."""

    def __init__(self, d, f, proj_std):
        super().__init__()
        self.ln_1 = nn.ParameterList([torch.ones(d), torch.zeros(d)])
        self.c_attn = nn.ParameterList([normal((d, 3 * d), INIT_STD), zeros(3 * d)])
        self.attn_proj = nn.ParameterList([normal((d, d), proj_std), zeros(d)])
        self.ln_2 = nn.ParameterList([torch.ones(d), torch.zeros(d)])
        self.c_fc = nn.ParameterList([normal((d, f), INIT_STD), zeros(f)])
        self.mlp_proj = nn.ParameterList([normal((f, d), proj_std), zeros(d)])

    def forward(self, x, n_heads, p):
        """Shapes: x [B, T, D] -> [B, T, D]"""
        attn = gpt_attention(layer_norm(x, self.ln_1), self.c_attn, self.attn_proj, n_heads)
        x = x + dropout(attn, p)
        mlp = gpt_mlp(layer_norm(x, self.ln_2), self.c_fc, self.mlp_proj)
        return x + dropout(mlp, p)


class Gpt2(nn.Module):
    """The vanilla baseline: L sequential pre-LN layers, tied embeddings."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.wte = normal((cfg.vocab_size, d), INIT_STD)
        self.wpe = normal((cfg.seq_len, d), INIT_STD)
        # the residual projections at 1/sqrt(2L), so the stream's variance does not grow
        proj_std = INIT_STD / math.sqrt(2 * cfg.n_steps)
        self.layers = nn.ModuleList(
            Gpt2Layer(d, cfg.ff_width, proj_std) for _ in range(cfg.n_steps))
        self.ln_f = nn.ParameterList([torch.ones(d), torch.zeros(d)])

    def forward(self, ids, use_checkpoint):
        """Shapes: ids [B, T] -> logits [B, T, V]"""
        h, p = self.cfg.n_heads, self.cfg.dropout
        x = dropout(F.embedding(ids, self.wte) + self.wpe[: ids.shape[1]], p)
        for layer in self.layers:
            if use_checkpoint:
                x = checkpoint(layer, x, h, p, use_reentrant=False)
            else:
                x = layer(x, h, p)
        return linear(layer_norm(x, self.ln_f), self.wte.t())


def optimizer(model, fused):
    """AdamW with the paper's settings and weight-decay masks (`OptimConfig::paper`, `decays`).

    The Rust step also moves the rate along its warmup/cosine schedule; that is one scalar per
    step and costs nothing, so a constant rate stands in for it here. fused=False is torch's
    default on the CPU (a loop over parameters); fused=True is its one-kernel-per-tensor path."""
    cfg = model.cfg
    decayed = set()
    for name, p in model.named_parameters():
        embedding = name in ("wte", "wpe", "lm_head")
        # GPT-2 also decays its attention and MLP matrices: the only 2-D tensors of its layers
        matrix = cfg.model == "gpt2" and name.startswith("layers.") and p.dim() == 2
        if embedding or matrix:
            decayed.add(id(p))
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": 0.1},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    lr = 3e-4 if cfg.d_model >= 1024 else 6e-4
    eps = 1e-6 if cfg.d_model >= 1280 else 1e-8
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=eps, fused=fused)


def time_steps(model, batch, reps, args):
    """The best time of each phase (forward, backward, optimiser) over `reps` steps, in s, and
    the CUDA allocator's peak bytes over the timed steps (0 on the CPU)."""
    cfg = model.cfg
    opt = optimizer(model, args.fused_adamw)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    cuda = args.device == "cuda"

    def now():
        # CUDA ops are asynchronous: a phase ends when the device has finished it
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    best = [math.inf] * 3
    for rep in range(reps + 1):
        x, y = (torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=gen)
                .to(args.device) for _ in range(2))
        if cuda and rep == 1:
            torch.cuda.reset_peak_memory_stats()
        start = now()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(x, not args.no_checkpoint)
            loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), y.view(-1))
        forward = now()
        loss.backward()
        backward = now()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        end = now()
        if rep > 0:  # rep 0 warms up: allocator, thread pool, first-touch pages, kernels
            phases = [forward - start, backward - forward, end - backward]
            best = [min(b, p) for b, p in zip(best, phases)]
    return best, torch.cuda.max_memory_allocated() if cuda else 0


def flops_per_token(cfg):
    """Model FLOPs of one token's training step (gpu_train_step.rs's `flops_per_token`)."""
    l, d, v, t = cfg.n_steps, cfg.d_model, cfg.vocab_size, cfg.seq_len
    return 6 * (l * 12 * d * d + d * v) + 12 * l * d * t


def cases(args):
    """The cases of train_step.rs, in its order: (label, config, batch); with --only-small
    those of gpu_train_step.rs."""
    tiny = [
        ("neural-ode tiny", Config("neural-ode"), 12),
        ("llama-ode tiny", Config("llama-ode"), 12),
        ("gpt2 tiny (4 layers)", Config("gpt2"), 12),
    ]
    small = [
        ("neural-ode small", small_config("neural-ode"), args.batch),
        ("gpt2 small", small_config("gpt2"), args.batch),
    ]
    if args.only_small:
        return small
    return tiny + small if args.small else tiny


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2 = cores)")
    ap.add_argument("--small", action="store_true", help="add the D = 768, T = 1024 cases")
    ap.add_argument("--no-checkpoint", action="store_true", help="keep all activations")
    ap.add_argument("--fused-adamw", action="store_true", help="torch's fused CPU AdamW")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (mixed precision)")
    ap.add_argument("--batch", type=int, default=1, help="B of the small cases")
    ap.add_argument("--only-small", action="store_true", help="only the D = 768 cases")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; run with --device cpu")
    if args.bf16 and args.device != "cuda":
        # the CPU's autocast keeps layer_norm's parameters f32 and its input bf16, and refuses
        raise SystemExit("--bf16 is the GPU peer's setting: add --device cuda")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.json:
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
        print(f"torch {torch.__version__}, {where}, "
              f"{'bf16 autocast' if args.bf16 else 'f32'}, "
              f"checkpoint {'off' if args.no_checkpoint else 'on'}, "
              f"AdamW {'fused' if args.fused_adamw else 'default'}")
        print("| model | B x T | params | forward ms | backward ms | AdamW ms | step ms "
              "| tokens/s | MFU |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, cfg, batch in cases(args):
        model = Gpt2(cfg) if cfg.model == "gpt2" else NeuralOde(cfg)
        params = sum(p.numel() for p in model.parameters())
        want = rust_param_count(cfg)
        assert params == want, f"{label}: {params} parameters, Config::param_count says {want}"
        model.to(args.device)
        (fwd, bwd, opt), peak = time_steps(model, batch, args.reps, args)
        step = fwd + bwd + opt
        tokens = batch * cfg.seq_len
        # utilisation only means something against the tensor cores' peak
        mfu = None
        if args.device == "cuda":
            mfu = tokens / step * flops_per_token(cfg) / PEAK_BF16_FLOPS
        if args.json:
            print(json.dumps({
                "model": label, "batch": batch, "seq_len": cfg.seq_len, "params": params,
                "forward_ms": fwd * 1e3, "backward_ms": bwd * 1e3, "adamw_ms": opt * 1e3,
                "step_ms": step * 1e3, "tokens_per_s": tokens / step, "mfu": mfu,
                "peak_bytes": peak, "device": args.device, "bf16": args.bf16,
                "threads": args.threads, "checkpoint": not args.no_checkpoint,
                "fused_adamw": args.fused_adamw, "torch": torch.__version__,
            }), flush=True)
        else:
            util = f"{mfu * 100:.1f}%" if mfu is not None else ""
            print(f"| {label} | {batch} x {cfg.seq_len} | {params / 1e6:.2f} M "
                  f"| {fwd * 1e3:.1f} | {bwd * 1e3:.1f} | {opt * 1e3:.1f} | {step * 1e3:.1f} "
                  f"| {tokens / step:.0f} | {util} |", flush=True)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
