//! # odeflow-kernels: the hand-written CUDA kernels
//!
//! This crate will hold odeflow's GPU code: one CUDA C source per op family (GEMM, fused
//! hypernetwork weight generation, flash-style attention forward and backward, fused
//! norm/activation/loss/optimizer kernels, and the fused steps of adjoint ODE backprop), the PTX
//! generated from them and committed, and the typed module enum through which the runtime's CUDA
//! backend loads them with `cudarc`. Every kernel will have a CPU reference in `odeflow-runtime`
//! and a test comparing the two. Nothing lives here yet: the CUDA backend is a later issue, and the
//! workspace must keep building with no CUDA toolkit and no GPU present.
