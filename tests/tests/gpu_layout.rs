//! The casts and transposes against the runtime (`Tensor::to_dtype`, which rounds with the
//! `half` crate, and `Tensor::t` made contiguous), at every launch configuration: the casts at
//! the elementwise grids (one partial block, one block, one block and one element, more
//! elements than the capped grid), the transposes with one tile, exact tiles, partial tiles at
//! the right and bottom edges (R and C not multiples of 32), single rows and columns, and
//! batches of several matrices. Outputs are poisoned with NaN before each launch.
//!
//! Tolerances: none. A cast to bf16 rounds to nearest even on both sides, and the test feeds it
//! the hard cases (ties, subnormals, the largest finite f32, which rounds to infinity), so it
//! must match bit for bit; the one exception is NaN, where the device may return the canonical
//! NaN rather than `half`'s payload, and only NaN-ness is compared. A cast to f32 is exact, and
//! is checked on every one of the 65536 bf16 bit patterns; there too a NaN need only stay a NaN
//! (`half` sets the quiet bit of a signalling NaN; the device's cvt.f32.bf16 may not). A
//! transpose moves bits, so it must match bit for bit, NaN payloads included.

use half::bf16;
use odeflow_kernels::elementwise::ElemType;
use odeflow_kernels::layout::{self, Cast};
use odeflow_runtime::{DType, Element, Rng, Tensor};
use odeflow_tests::gpu::{device, elementwise_sizes, poisoned};

/// The f32 values whose rounding to bf16 is easy to get wrong.
fn hard_cases() -> Vec<f32> {
    let bits = [
        0x3F80_8000u32, // 1 + 2^-8: a tie, the even neighbour is below
        0x3F81_8000,    // a tie whose even neighbour is above
        0x3F80_8001,    // just past a tie: rounds up
        0x3F80_7FFF,    // just short of a tie: rounds down
        0x0000_0001,    // the smallest subnormal: rounds to 0
        0x0000_8000,    // a subnormal tie
        0x0001_8000,    // a subnormal tie that rounds up
        0x007F_FFFF,    // the largest subnormal: rounds to the smallest normal
        0x7F7F_FFFF,    // the largest finite f32: rounds to infinity
        0x7F7F_7FFF,    // rounds down to the largest finite bf16
        0x7F80_0000,    // infinity
        0xFF80_0000,    // minus infinity
        0x8000_0000,    // minus zero
        0x7FC0_0000,    // a quiet NaN
        0x7F80_0001,    // a signalling NaN whose payload would be lost by truncation
    ];
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

/// n values spread over many binades, starting with the hard cases.
fn cast_inputs(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut values = hard_cases();
    while values.len() < n {
        let scale = 2f32.powi(rng.below(60) as i32 - 30);
        values.push(scale * rng.normal());
    }
    values.truncate(n);
    values
}

fn bf16_bits(t: &Tensor) -> Vec<u16> {
    t.to_vec::<bf16>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn is_bf16_nan(bits: u16) -> bool {
    bits & 0x7FFF > 0x7F80
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_cast_to_bf16_rounds_like_half() {
    let gpu = device();
    let mut rng = Rng::new(21);
    for n in elementwise_sizes() {
        let xs = cast_inputs(n, &mut rng);
        let x = gpu.upload(&xs).unwrap();
        let mut y = poisoned(&gpu, n, ElemType::Bf16);
        layout::cast_fwd_into(&mut y, Cast::F32ToBf16, &x, n).unwrap();
        let got = gpu.download::<u16>(&y).unwrap();
        let cpu = Tensor::from_vec(xs.clone(), &[n]).unwrap();
        let want = bf16_bits(&cpu.to_dtype(DType::BF16).unwrap());
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let both_nan = is_bf16_nan(g) && is_bf16_nan(w);
            assert!(
                g == w || both_nan,
                "n={n} element {i}: {:#010x} -> {g:#06x}, want {w:#06x}",
                xs[i].to_bits()
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_cast_to_f32_is_exact_on_every_bf16() {
    let gpu = device();
    let mut sizes = elementwise_sizes();
    sizes.push(1 << 16);
    for n in sizes {
        // every bit pattern, repeated to fill n
        let bits: Vec<u16> = (0..n).map(|i| (i % (1 << 16)) as u16).collect();
        let x = gpu.upload(&bits).unwrap();
        let mut y = poisoned(&gpu, n, ElemType::F32);
        layout::cast_fwd_into(&mut y, Cast::Bf16ToF32, &x, n).unwrap();
        let values: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
        let cpu = Tensor::from_vec(values, &[n]).unwrap();
        let want = f32_bits(&cpu.to_dtype(DType::F32).unwrap());
        let got = gpu.download::<u32>(&y).unwrap();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let both_nan = f32::from_bits(g).is_nan() && f32::from_bits(w).is_nan();
            assert!(
                g == w || both_nan,
                "n={n} element {i}: {:#06x} -> {g:#010x}, want {w:#010x}",
                bits[i]
            );
        }
    }
}

/// (batch, R, C): one tile, exact tiles, partial tiles on both edges, a single row and a
/// single column, and batches.
fn transpose_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 1, 1),
        (1, 32, 32),
        (1, 64, 96),
        (1, 33, 31),
        (1, 1, 100),
        (1, 100, 1),
        (3, 70, 45),
        (5, 17, 64),
        (2, 129, 257),
    ]
}

/// The runtime's transpose of the last two dims, made contiguous.
fn cpu_transpose<T: Element>(values: Vec<T>, shape: [usize; 3]) -> Tensor {
    let t = Tensor::from_vec(values, &shape).unwrap();
    t.t().unwrap().contiguous().unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn transposes_match_the_cpu_bit_for_bit() {
    let gpu = device();
    let mut rng = Rng::new(22);
    for (b, r, c) in transpose_shapes() {
        let n = b * r * c;
        let label = format!("[{b}, {r}, {c}]");
        // f32: random values
        let xs: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let x = gpu.upload(&xs).unwrap();
        let mut y = poisoned(&gpu, n, ElemType::F32);
        layout::transpose_fwd_into(&mut y, ElemType::F32, &x, b, r, c).unwrap();
        let want = cpu_transpose(xs, [b, r, c]);
        assert_eq!(
            gpu.download::<u32>(&y).unwrap(),
            f32_bits(&want),
            "f32 {label}"
        );
        // bf16: random bit patterns, NaN payloads included
        let bits: Vec<u16> = (0..n).map(|_| rng.next_u64() as u16).collect();
        let x = gpu.upload(&bits).unwrap();
        let mut y = poisoned(&gpu, n, ElemType::Bf16);
        layout::transpose_fwd_into(&mut y, ElemType::Bf16, &x, b, r, c).unwrap();
        let values: Vec<bf16> = bits.iter().map(|&v| bf16::from_bits(v)).collect();
        let want = cpu_transpose(values, [b, r, c]);
        assert_eq!(
            gpu.download::<u16>(&y).unwrap(),
            bf16_bits(&want),
            "bf16 {label}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_allocating_forms_agree_with_the_into_forms() {
    let gpu = device();
    let xs: Vec<f32> = (0..6).map(|i| i as f32 * 0.3).collect();
    let x = gpu.upload(&xs).unwrap();
    let y = layout::transpose_fwd(ElemType::F32, &x, 1, 2, 3).unwrap();
    // [[0, .3, .6], [.9, 1.2, 1.5]] transposed
    let want: Vec<f32> = [0, 3, 1, 4, 2, 5].iter().map(|&i| xs[i]).collect();
    assert_eq!(gpu.download::<f32>(&y).unwrap(), want);
    let h = layout::cast_fwd(Cast::F32ToBf16, &x, 6).unwrap();
    let back = layout::cast_fwd(Cast::Bf16ToF32, &h, 6).unwrap();
    let want: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(gpu.download::<f32>(&back).unwrap(), want);
}
