//! The tape's mechanics: accumulation, parameters, no_grad, freeing, and misuse errors.
//! Values here are small enough to check by hand; the calculus is in the comments.

use odeflow_autodiff::{Error, Param, Tape};
use odeflow_runtime::{DType, Tensor};

fn t(values: &[f32]) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[values.len()]).unwrap()
}

fn vals(x: &Tensor) -> Vec<f32> {
    x.to_vec::<f32>().unwrap()
}

#[test]
fn gradients_of_a_two_op_expression_by_hand() {
    // L = sum(a * b + a)  ->  dL/da = b + 1, dL/db = a
    let tape = Tape::new();
    let a = tape.leaf(t(&[1.0, 2.0, 3.0]));
    let b = tape.leaf(t(&[4.0, -5.0, 6.0]));
    let loss = a.mul(&b).unwrap().add(&a).unwrap().sum_all().unwrap();
    assert_eq!(loss.value().to_scalar().unwrap(), 4.0 - 10.0 + 18.0 + 6.0);
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(vals(grads.get(&a).unwrap()), vec![5.0, -4.0, 7.0]);
    assert_eq!(vals(grads.get(&b).unwrap()), vec![1.0, 2.0, 3.0]);
}

#[test]
fn broadcast_operands_get_gradients_summed_to_their_shape() {
    // y = x + bias with x [2, 3], bias [3]: dL/dbias = column sums of dL/dy = [2, 2, 2]
    let tape = Tape::new();
    let x = tape.leaf(Tensor::zeros(&[2, 3], DType::F32));
    let bias = tape.leaf(t(&[1.0, 2.0, 3.0]));
    let loss = x.add(&bias).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(vals(grads.get(&bias).unwrap()), vec![2.0, 2.0, 2.0]);
    assert_eq!(grads.get(&x).unwrap().shape(), &[2, 3]);
}

#[test]
fn parameters_accumulate_across_passes_until_zero_grad() {
    // L = sum(w * x) -> dL/dw = x; two passes add up
    let w = Param::new("w", t(&[1.0, 1.0]));
    for x in [[1.0, 2.0], [10.0, 20.0]] {
        let tape = Tape::new();
        let loss = tape
            .param(&w)
            .mul(&tape.constant(t(&x)))
            .unwrap()
            .sum_all()
            .unwrap();
        tape.backward(&loss).unwrap();
    }
    assert_eq!(vals(&w.grad().unwrap()), vec![11.0, 22.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
}

#[test]
fn a_parameter_used_twice_in_one_pass_gets_both_paths() {
    // L = sum(w * w * x): dL/dw = 2 w x
    let w = Param::new("w", t(&[3.0]));
    let tape = Tape::new();
    let (w1, w2) = (tape.param(&w), tape.param(&w));
    let loss = w1.mul(&w2).unwrap().scale(2.0).unwrap().sum_all().unwrap();
    tape.backward(&loss).unwrap();
    assert_eq!(vals(&w.grad().unwrap()), vec![12.0]);
}

#[test]
fn set_value_keeps_the_shape_and_dtype() {
    let w = Param::new("layer.w", Tensor::zeros(&[2, 3], DType::F32));
    assert!(w.set_value(Tensor::ones(&[2, 3], DType::F32)).is_ok());
    let err = w.set_value(Tensor::ones(&[3, 2], DType::F32)).unwrap_err();
    assert!(matches!(err, Error::ParamMismatch { .. }));
    assert!(err.to_string().contains("layer.w"), "{err}");
    let err = w.set_value(Tensor::ones(&[2, 3], DType::BF16)).unwrap_err();
    assert!(matches!(err, Error::ParamMismatch { .. }));
}

#[test]
fn no_grad_records_nothing_and_then_resumes() {
    let tape = Tape::new();
    let x = tape.leaf(t(&[1.0, 2.0]));
    let y = tape.no_grad(|| x.exp().unwrap().sum_all().unwrap());
    assert!(!y.requires_grad());
    assert_eq!(tape.len(), 1, "only the leaf");
    assert!(matches!(
        tape.backward(&y),
        Err(Error::NothingToDifferentiate)
    ));

    // a panic inside the scope still restores recording
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tape.no_grad(|| panic!("inside no_grad"))
    }));
    assert!(caught.is_err());
    assert!(tape.is_recording());
    assert!(x.exp().unwrap().requires_grad());
}

#[test]
fn backward_frees_the_tape_and_old_vars_are_refused() {
    let tape = Tape::new();
    let x = tape.leaf(t(&[1.0, 2.0]));
    let loss = x.exp().unwrap().sum_all().unwrap();
    assert_eq!(tape.len(), 3);
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(tape.len(), 0, "backward frees every node");
    assert!(grads.get(&x).is_some());

    // the consumed pass cannot be extended or walked again
    assert!(matches!(x.exp(), Err(Error::StaleVar { .. })));
    assert!(matches!(tape.backward(&loss), Err(Error::StaleVar { .. })));

    // but the tape itself records a new pass
    let x2 = tape.leaf(t(&[0.0]));
    let loss2 = x2.exp().unwrap().sum_all().unwrap();
    let grads2 = tape.backward(&loss2).unwrap();
    assert_eq!(vals(grads2.get(&x2).unwrap()), vec![1.0]);
    assert!(grads2.get(&x).is_none(), "x is not a leaf of this pass");
}

#[test]
fn unreached_leaves_have_no_gradient() {
    let tape = Tape::new();
    let used = tape.leaf(t(&[1.0]));
    let unused = tape.leaf(t(&[1.0]));
    let _dead_branch = unused.exp().unwrap();
    let loss = used.sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert!(grads.get(&used).is_some());
    assert!(grads.get(&unused).is_none());
}

#[test]
fn vars_from_two_tapes_do_not_mix() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let a = t1.leaf(t(&[1.0]));
    let b = t2.leaf(t(&[1.0]));
    let err = a.add(&b).unwrap_err();
    assert!(matches!(err, Error::ForeignVar { op: "add" }), "{err}");
    assert!(
        err.to_string().contains("checkpoint"),
        "the message says what to do: {err}"
    );
    let loss = a.sum_all().unwrap();
    assert!(matches!(t2.backward(&loss), Err(Error::ForeignVar { .. })));
}

#[test]
fn backward_needs_a_scalar_or_a_matching_seed() {
    let tape = Tape::new();
    let x = tape.leaf(t(&[1.0, 2.0]));
    let y = x.scale(3.0).unwrap();
    assert!(matches!(
        tape.backward(&y),
        Err(Error::NonScalarLoss { .. })
    ));
    let wrong = tape.backward_with(&y, t(&[1.0, 2.0, 3.0])).unwrap_err();
    assert!(matches!(wrong, Error::Runtime(_)), "{wrong}");
    // a vector-Jacobian product: dy = [1, -1] gives dx = 3 * dy
    let grads = tape.backward_with(&y, t(&[1.0, -1.0])).unwrap();
    assert_eq!(vals(grads.get(&x).unwrap()), vec![3.0, -3.0]);
}

#[test]
fn runtime_errors_pass_through_with_the_op_name() {
    let tape = Tape::new();
    let a = tape.leaf(Tensor::zeros(&[2, 3], DType::F32));
    let b = tape.leaf(Tensor::zeros(&[4, 5], DType::F32));
    let err = a.matmul(&b).unwrap_err();
    assert!(matches!(err, Error::Runtime(_)));
    assert!(err.to_string().contains("matmul"), "{err}");
}

#[test]
fn constants_and_detach_stop_gradients() {
    // L = sum(x * detach(x)): only the first factor is differentiated, so dL/dx = x
    let tape = Tape::new();
    let x = tape.leaf(t(&[2.0, -3.0]));
    let loss = x.mul(&x.detach()).unwrap().sum_all().unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(vals(grads.get(&x).unwrap()), vec![2.0, -3.0]);
    let c = tape.constant(t(&[1.0]));
    assert!(
        !c.exp().unwrap().requires_grad(),
        "ops on constants record nothing"
    );
}

#[test]
fn dropout_masks_scale_and_route_the_gradient() {
    use odeflow_runtime::Rng;
    let n = 20_000;
    let tape = Tape::new();
    let x = tape.leaf(Tensor::ones(&[n], DType::F32));
    let y = x.dropout(0.1, &mut Rng::new(5)).unwrap();
    let ys = vals(y.value());
    // survivors are scaled by 1 / 0.9; about 10% are dropped (6 sigma is 0.0127 here)
    let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.1).abs() < 0.0127, "dropped {dropped}");
    assert!(ys.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    // dL/dx for L = sum(y) is the mask itself
    let grads = tape.backward(&y.sum_all().unwrap()).unwrap();
    assert_eq!(vals(grads.get(&x).unwrap()), ys);
    // the same seed draws the same mask
    let again = x.detach().dropout(0.1, &mut Rng::new(5)).unwrap();
    assert_eq!(vals(again.value()), ys);
}

#[test]
fn backward_from_several_outputs_sums_their_products() {
    // y1 = 2a, y2 = a * b with seeds g1, g2: da = 2 g1 + b g2, db = a g2
    let tape = Tape::new();
    let a = tape.leaf(t(&[1.0, 2.0]));
    let b = tape.leaf(t(&[3.0, -1.0]));
    let y1 = a.scale(2.0).unwrap();
    let y2 = a.mul(&b).unwrap();
    let seeds = vec![(&y2, t(&[1.0, 1.0])), (&y1, t(&[0.5, -1.0]))];
    let grads = tape.backward_many(seeds).unwrap();
    assert_eq!(vals(grads.get(&a).unwrap()), vec![1.0 + 3.0, -2.0 - 1.0]);
    assert_eq!(vals(grads.get(&b).unwrap()), vec![1.0, 2.0]);
    assert!(tape.is_empty());
}

#[test]
fn a_mixed_precision_tape_computes_in_bf16_and_hands_f32_gradients_back() {
    // loss = sum(w * x) with w an f32 master and the pass in bf16: dloss/dw = x, cast to f32
    let tape = Tape::with_compute(Some(DType::BF16));
    let w = Param::new("w", t(&[1.5, -2.0, 0.25]));
    let wv = tape.param_cast(&w).unwrap();
    assert_eq!(wv.dtype(), DType::BF16);
    let x = tape.constant_cast(t(&[2.0, 0.5, 4.0])).unwrap();
    assert_eq!(x.dtype(), DType::BF16);
    let ids = tape
        .constant_cast(Tensor::from_vec(vec![1u32, 2], &[2]).unwrap())
        .unwrap();
    assert_eq!(ids.dtype(), DType::U32, "integers are not cast");
    let loss = wv.mul(&x).unwrap().sum_all().unwrap();
    assert_eq!(loss.value().to_scalar().unwrap(), 3.0 - 1.0 + 1.0);
    tape.backward(&loss).unwrap();
    let g = w.grad().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(vals(&g), vec![2.0, 0.5, 4.0]);
    // without a compute dtype nothing is cast
    let plain = Tape::new();
    assert_eq!(plain.param_cast(&w).unwrap().dtype(), DType::F32);
}

/// The loss of the weights `Var::generate` makes from h [2, 2] and a stacked F [2, 3]:
/// L = sum_i c_i . w_i, so dL/dw_i = c_i and dF = h^T [c_0; c_1], dh[i, k] = c_i . F[k].
fn generated_loss(tape: &Tape, f: odeflow_autodiff::Var) -> odeflow_autodiff::Var {
    let h = tape.constant_cast(Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5], &[2, 2]).unwrap());
    let steps = odeflow_autodiff::Var::generate(&h.unwrap(), &f).unwrap();
    let c = [t(&[1.0, 0.0, 2.0]), t(&[-1.0, 3.0, 0.5])];
    let terms = steps.iter().zip(&c).map(|(w, c)| {
        let c = tape.constant_cast(c.clone()).unwrap();
        w.mul(&c).unwrap().sum_all().unwrap()
    });
    terms.reduce(|a, b| a.add(&b).unwrap()).unwrap()
}

#[test]
fn a_stacked_parameter_takes_its_generated_gradient_straight_into_its_buffer() {
    // dF = h^T [c_0; c_1]: row 0 = 1 c_0 - 1 c_1, row 1 = 2 c_0 + 0.5 c_1
    let df = [2.0, -3.0, 1.5, 1.5, 1.5, 4.25];
    let f_value = Tensor::from_vec(vec![0.5, -1.0, 2.0, 1.0, 0.0, -2.0], &[2, 3]).unwrap();
    let f = Param::new("f", f_value.clone());
    for pass in 1..=2 {
        let tape = Tape::new();
        let loss = generated_loss(&tape, tape.param(&f));
        tape.backward(&loss).unwrap();
        // the fused sum over passes: pass times dF, exactly (small integers and halves)
        let want: Vec<f32> = df.iter().map(|d| d * pass as f32).collect();
        assert_eq!(vals(&f.grad().unwrap()), want);
    }
    // the same dF as the plain path, where F is a leaf and the walk returns its gradient
    let tape = Tape::new();
    let leaf = tape.leaf(f_value);
    let loss = generated_loss(&tape, leaf.clone());
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(vals(grads.get(&leaf).unwrap()), df.to_vec());

    // cast to bf16 for the pass (`param_cast`): the f32 buffer takes the sum, not a bf16 one
    let g = Param::new("g", Tensor::zeros(&[2, 3], DType::F32));
    let tape = Tape::with_compute(Some(DType::BF16));
    let loss = generated_loss(&tape, tape.param_cast(&g).unwrap());
    tape.backward(&loss).unwrap();
    let grad = g.grad().unwrap();
    assert_eq!(grad.dtype(), DType::F32);
    assert_eq!(vals(&grad), df.to_vec()); // all of them exact in bf16 too
}

#[test]
fn the_coefficients_of_a_fused_generation_still_get_their_gradient() {
    // dh[i, k] = c_i . F[k]: c_0 . F = (0.5 + 4, 1 - 4) , c_1 . F = (-0.5 - 3 + 1, -1 - 1)
    let f = Param::new(
        "f",
        Tensor::from_vec(vec![0.5, -1.0, 2.0, 1.0, 0.0, -2.0], &[2, 3]).unwrap(),
    );
    let tape = Tape::new();
    let h = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5], &[2, 2]).unwrap());
    let steps = odeflow_autodiff::Var::generate(&h, &tape.param(&f)).unwrap();
    let c = [t(&[1.0, 0.0, 2.0]), t(&[-1.0, 3.0, 0.5])];
    let loss = steps
        .iter()
        .zip(&c)
        .map(|(w, c)| w.mul(&tape.constant(c.clone())).unwrap().sum_all().unwrap())
        .reduce(|a, b| a.add(&b).unwrap())
        .unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(vals(grads.get(&h).unwrap()), vec![4.5, -3.0, -2.5, -2.0]);
    assert!(f.grad().is_some());
}

#[test]
fn a_frozen_parameter_is_a_constant_and_gets_no_gradient() {
    // L = sum(w * v): dL/dv = w still flows, dL/dw is never computed
    let (w, v) = (
        Param::new("w", t(&[2.0, 3.0])),
        Param::new("v", t(&[5.0, 7.0])),
    );
    let backward = || {
        let tape = Tape::new();
        let loss = tape
            .param(&w)
            .mul(&tape.param(&v))
            .unwrap()
            .sum_all()
            .unwrap();
        tape.backward(&loss).unwrap();
    };
    w.set_frozen(true);
    backward();
    assert!(w.grad().is_none());
    assert_eq!(vals(&v.grad().unwrap()), vec![2.0, 3.0]);
    // thawed, it takes part again
    w.set_frozen(false);
    backward();
    assert_eq!(vals(&w.grad().unwrap()), vec![5.0, 7.0]);
}
