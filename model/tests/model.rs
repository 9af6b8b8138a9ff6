//! Whole-model properties: parameter counts, causality, re-discretisation, depth changes, and
//! input errors.

mod common;

use common::{all_kinds, logits, max_abs_diff, randomize, tiny, tokens};
use odeflow_autodiff::Tape;
use odeflow_model::{Config, Forward, GradMode, Model, ModelKind, Solver};

#[test]
fn allocated_parameters_match_the_arithmetic_count() {
    let mut configs: Vec<Config> = all_kinds().into_iter().map(|(_, c)| c).collect();
    configs.push(Config::tiny());
    configs.push(Config::tiny().with_model(ModelKind::LlamaOde));
    configs.push(Config::tiny().with_model(ModelKind::Gpt2));
    configs.push(Config {
        tie_embeddings: false,
        ..tiny(ModelKind::NeuralOde)
    });
    configs.push(Config {
        discrete: true,
        n_steps: 5,
        ..tiny(ModelKind::NeuralOde)
    });
    configs.push(Config {
        discrete: true,
        ..tiny(ModelKind::LlamaOde)
    });
    for cfg in configs {
        let model = Model::new(&cfg, 0).unwrap();
        assert_eq!(model.param_count(), cfg.param_count(), "{cfg:?}");
        let mut names: Vec<&str> = model.params().iter().map(|p| p.name()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "parameter names must be unique");
    }
}

#[test]
fn a_future_token_never_changes_an_earlier_logit() {
    for (label, cfg) in all_kinds() {
        let model = Model::new(&cfg, 3).unwrap();
        randomize(&model, 0.3, 4);
        let (t, v) = (cfg.seq_len, cfg.vocab_size);
        let ids = tokens(1, t, v, 5);
        let base = logits(&model, &ids, &Forward::eval());
        for k in 0..t {
            let mut changed = ids.to_vec::<u32>().unwrap();
            changed[k] = (changed[k] + 1) % v as u32;
            let changed = odeflow_runtime::Tensor::from_vec(changed, &[1, t]).unwrap();
            let after = logits(&model, &changed, &Forward::eval());
            let before_k = k * v;
            assert_eq!(
                &base[..before_k],
                &after[..before_k],
                "{label}: token {k} leaked back"
            );
            assert_ne!(
                &base[before_k..],
                &after[before_k..],
                "{label}: token {k} had no effect"
            );
        }
    }
}

#[test]
fn to_discrete_at_l_steps_reproduces_the_ode_and_at_other_depths_its_solve() {
    for (label, cfg) in all_kinds() {
        let Model::Ode(ode) = Model::new(&cfg, 6).unwrap() else {
            continue; // gpt2 has no ODE to discretise
        };
        let as_model = Model::Ode(ode);
        randomize(&as_model, 0.3, 7);
        let Model::Ode(ode) = as_model else {
            unreachable!()
        };
        let ids = tokens(2, cfg.seq_len, cfg.vocab_size, 8);
        let ode_logits = |steps| {
            let fwd = Forward {
                steps: Some(steps),
                ..Forward::eval()
            };
            let tape = Tape::new();
            let y = tape.no_grad(|| ode.forward(&tape, &ids, &fwd)).unwrap();
            y.value().to_vec::<f32>().unwrap()
        };
        let at_l = ode_logits(cfg.n_steps);
        let scale = at_l.iter().fold(0f32, |m, x| m.max(x.abs()));
        for n in [cfg.n_steps, 2, 5] {
            let discrete = Model::Discrete(ode.to_discrete(n).unwrap());
            assert_eq!(discrete.config().n_steps, n);
            let got = logits(&discrete, &ids, &Forward::eval());
            // the same weights through the same code: equal up to rounding
            let err = max_abs_diff(&got, &ode_logits(n));
            assert!(
                err <= 1e-5 * scale,
                "{label}, n = {n}: {err} off the {n}-step ODE"
            );
            if n != cfg.n_steps {
                let diff = max_abs_diff(&got, &at_l);
                assert!(
                    diff > 1e-3 * scale,
                    "{label}, n = {n}: same as L = {}",
                    cfg.n_steps
                );
            }
        }
    }
}

#[test]
fn the_converted_model_owns_its_parameters() {
    let cfg = tiny(ModelKind::NeuralOde);
    let Model::Ode(ode) = Model::new(&cfg, 1).unwrap() else {
        unreachable!()
    };
    let discrete = ode.to_discrete(cfg.n_steps).unwrap();
    let wte = &discrete.params()[0];
    assert_eq!(wte.name(), "wte.weight");
    wte.set_value(odeflow_runtime::Tensor::zeros(
        &wte.shape(),
        wte.value().dtype(),
    ))
    .unwrap();
    let original = ode.params()[0].value().to_vec::<f32>().unwrap();
    assert!(
        original.iter().any(|&x| x != 0.0),
        "changing the copy changed the original"
    );
}

#[test]
fn bad_inputs_are_refused_with_a_reason() {
    let cfg = tiny(ModelKind::NeuralOde);
    let model = Model::new(&cfg, 0).unwrap();
    let tape = Tape::new();
    let err = |ids: &odeflow_runtime::Tensor, fwd: &Forward| {
        let e = model.forward(&tape, ids, fwd).expect_err("should fail");
        e.to_string()
    };
    let too_long = tokens(1, cfg.seq_len + 1, cfg.vocab_size, 0);
    assert!(err(&too_long, &Forward::eval()).contains("longer than the model's context of 8"));
    let bad_id = odeflow_runtime::Tensor::from_vec(vec![0u32, 99], &[1, 2]).unwrap();
    assert!(err(&bad_id, &Forward::eval()).contains("99"));
    let zero = Forward {
        steps: Some(0),
        ..Forward::eval()
    };
    assert!(err(&tokens(1, 2, 32, 0), &zero).contains("at least 1"));
    let gpt = Model::new(&tiny(ModelKind::Gpt2), 0).unwrap();
    let deeper = Forward {
        steps: Some(5),
        ..Forward::eval()
    };
    let e = gpt
        .forward(&tape, &tokens(1, 2, 32, 0), &deeper)
        .err()
        .unwrap();
    assert!(e.to_string().contains("fixed depth of 3 layers"), "{e}");
    // fixed layers are Euler steps with fixed weights: no other solver, no adjoint
    let ode = Model::new(&cfg, 0).unwrap();
    let Model::Ode(ode) = ode else { unreachable!() };
    let discrete = Model::Discrete(ode.to_discrete(3).unwrap());
    for model in [&gpt, &discrete] {
        let rk4 = Forward {
            solver: Solver::Rk4,
            ..Forward::eval()
        };
        let e = model
            .forward(&tape, &tokens(1, 2, 32, 0), &rk4)
            .err()
            .unwrap();
        assert!(e.to_string().contains("fixed Euler steps"), "{e}");
        let adjoint = Forward {
            grad: GradMode::Adjoint,
            ..Forward::eval()
        };
        let e = model.check_forward(&adjoint).unwrap_err();
        assert!(e.to_string().contains("use backprop or checkpoint"), "{e}");
    }
}

#[test]
fn an_ode_model_runs_at_any_step_count() {
    let cfg = tiny(ModelKind::NeuralOde);
    let model = Model::new(&cfg, 2).unwrap();
    randomize(&model, 0.3, 3);
    let ids = tokens(1, 5, cfg.vocab_size, 4);
    let run = |n| {
        let fwd = Forward {
            steps: Some(n),
            ..Forward::eval()
        };
        assert_eq!(model.nfe(&fwd), n);
        logits(&model, &ids, &fwd)
    };
    let (a, b) = (run(1), run(7));
    assert!(a.iter().chain(&b).all(|x| x.is_finite()));
    assert!(max_abs_diff(&a, &b) > 1e-4);
}
