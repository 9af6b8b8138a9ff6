//! Parameter creation: every parameter draws from its own random stream, keyed by its name.
//!
//! The reference code reuses random keys across modules, so its two norms start identical
//! (MODEL.md section 12). Here each parameter's stream is `Rng::new(hash(seed, name))`: streams
//! never collide, and a parameter's initial value does not depend on the order in which the
//! model creates its parameters, nor on which other parameters exist.

use odeflow_autodiff::Param;
use odeflow_runtime::{DType, Rng, Tensor};

/// Creates a model's parameters, remembering them in creation order (the checkpoint order).
pub struct Init {
    seed: u64,
    params: Vec<Param>,
}

impl Init {
    pub fn new(seed: u64) -> Init {
        Init {
            seed,
            params: Vec::new(),
        }
    }

    /// The parameters created so far.
    pub fn finish(self) -> Vec<Param> {
        self.params
    }

    /// N(mean, std^2) entries, from the stream of (seed, name).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f32) -> Param {
        let mut rng = self.stream(name);
        self.push(name, Tensor::randn(shape, 0.0, std, DType::F32, &mut rng))
    }

    pub fn zeros(&mut self, name: &str, shape: &[usize]) -> Param {
        self.push(name, Tensor::zeros(shape, DType::F32))
    }

    pub fn ones(&mut self, name: &str, shape: &[usize]) -> Param {
        self.push(name, Tensor::ones(shape, DType::F32))
    }

    /// A parameter with a value built by the caller (mixed initialisations, materialised
    /// weights).
    pub fn value(&mut self, name: &str, value: Tensor) -> Param {
        self.push(name, value)
    }

    /// The random stream of (seed, name), for a caller that builds a value piece by piece.
    pub fn stream(&self, name: &str) -> Rng {
        Rng::new(fnv1a(self.seed, name))
    }

    fn push(&mut self, name: &str, value: Tensor) -> Param {
        let p = Param::new(name, value);
        self.params.push(p.clone());
        p
    }
}

/// FNV-1a over the seed's bytes then the name's: a fixed, platform-independent hash.
fn fnv1a(seed: u64, name: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = seed.to_le_bytes().into_iter().chain(name.bytes());
    bytes.fold(OFFSET, |h, b| (h ^ b as u64).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_on_name_and_seed_not_on_order() {
        let draw = |init: &mut Init, name: &str| init.normal(name, &[4], 1.0).value();
        let (mut a, mut b) = (Init::new(1), Init::new(1));
        let a1 = draw(&mut a, "x");
        let a2 = draw(&mut a, "y");
        let b2 = draw(&mut b, "y");
        let b1 = draw(&mut b, "x");
        let v = |t: Tensor| t.to_vec::<f32>().unwrap();
        assert_eq!(v(a1.clone()), v(b1));
        assert_eq!(v(a2.clone()), v(b2));
        assert_ne!(v(a1.clone()), v(a2));
        assert_ne!(v(a1), v(draw(&mut Init::new(2), "x")));
        assert_eq!(a.finish().len(), 2);
    }
}
