//! CMA-ES (Hansen, "The CMA Evolution Strategy: A Tutorial", 2016), ask/tell, maximising.
//!
//! Full covariance with rank-one and rank-mu updates, cumulative step-size adaptation, the
//! h_sigma stall, and the eigendecomposition refreshed lazily (every
//! `1 / (10 n (c1 + c_mu))` generations, as in the tutorial's reference code). Sampling uses
//! a seeded ChaCha generator, so a seed fixes the whole run. Candidates can be evaluated in any
//! order or on any number of threads; `tell` takes the fitnesses in `ask`'s order.

use crate::PolicyError;
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// CMA-ES settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmaEsConfig {
    /// Population size λ (0 = the default `4 + floor(3 ln n)`; the paper used 64).
    pub population: usize,
    /// Initial step size σ0 (the paper used 0.1).
    pub sigma0: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl CmaEsConfig {
    /// Checks the settings before any work starts (`population` 0 means the default).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.population == 1 || self.population > 100_000 {
            return Err(PolicyError::Config(format!(
                "cmaes.population must be 0 (the default) or in 2..=100000, got {}",
                self.population
            )));
        }
        if !(self.sigma0.is_finite() && self.sigma0 > 0.0) {
            return Err(PolicyError::Config(format!(
                "cmaes.sigma0 must be a positive number, got {}",
                self.sigma0
            )));
        }
        Ok(())
    }
}

impl Default for CmaEsConfig {
    fn default() -> Self {
        Self {
            population: 0,
            sigma0: 0.1,
            seed: 0,
        }
    }
}

/// A snapshot of [`CmaEs`] between generations (JSON-friendly: matrices column-major, the
/// sampler's position as a decimal string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmaEsState {
    /// Mean m.
    pub mean: Vec<f64>,
    /// Step size σ.
    pub sigma: f64,
    /// Evolution path of σ.
    pub p_sigma: Vec<f64>,
    /// Evolution path of C.
    pub p_c: Vec<f64>,
    /// Covariance C, column-major.
    pub c: Vec<f64>,
    /// Eigenvectors B of the last decomposition, column-major.
    pub b: Vec<f64>,
    /// Square roots D of the last decomposition's eigenvalues.
    pub d: Vec<f64>,
    /// Generation of the last decomposition.
    pub eigen_generation: u64,
    /// Generations told.
    pub generation: u64,
    /// The sampler's word position (a u128, as text).
    pub rng_word_pos: String,
    /// The best candidate so far and its fitness.
    pub best: Option<(f64, Vec<f64>)>,
}

/// The optimiser's state.
pub struct CmaEs {
    n: usize,
    lambda: usize,
    mu: usize,
    weights: Vec<f64>,
    mu_eff: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    c1: f64,
    c_mu: f64,
    chi_n: f64,
    mean: DVector<f64>,
    sigma: f64,
    p_sigma: DVector<f64>,
    p_c: DVector<f64>,
    c: DMatrix<f64>,
    b: DMatrix<f64>,
    d: DVector<f64>,
    eigen_generation: u64,
    generation: u64,
    rng: ChaCha8Rng,
    /// Standard-normal draws of the last `ask` (columns), to rebuild y = B D z in `tell`.
    last: Vec<DVector<f64>>,
    best: Option<(f64, Vec<f64>)>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    use rand::RngExt;
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl CmaEs {
    /// Starts at `x0`.
    pub fn new(x0: &[f64], config: &CmaEsConfig) -> Result<Self, PolicyError> {
        let n = x0.len();
        if n == 0 {
            return Err(PolicyError::Config(
                "CMA-ES needs at least one parameter".into(),
            ));
        }
        if !(config.sigma0 > 0.0 && config.sigma0.is_finite()) {
            return Err(PolicyError::Config(format!(
                "sigma0 must be positive, got {}",
                config.sigma0
            )));
        }
        let nf = n as f64;
        let lambda = if config.population == 0 {
            4 + (3.0 * nf.ln()).floor() as usize
        } else {
            config.population
        };
        if lambda < 2 {
            return Err(PolicyError::Config(
                "the population must be at least 2".into(),
            ));
        }
        let mu = lambda / 2;
        let raw: Vec<f64> = (1..=mu)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - (i as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mu_eff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let c_sigma = (mu_eff + 2.0) / (nf + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / nf) / (nf + 4.0 + 2.0 * mu_eff / nf);
        let c1 = 2.0 / ((nf + 1.3).powi(2) + mu_eff);
        let c_mu =
            (1.0 - c1).min(2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((nf + 2.0).powi(2) + mu_eff));
        let chi_n = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        Ok(Self {
            n,
            lambda,
            mu,
            weights,
            mu_eff,
            c_sigma,
            d_sigma,
            c_c,
            c1,
            c_mu,
            chi_n,
            mean: DVector::from_column_slice(x0),
            sigma: config.sigma0,
            p_sigma: DVector::zeros(n),
            p_c: DVector::zeros(n),
            c: DMatrix::identity(n, n),
            b: DMatrix::identity(n, n),
            d: DVector::from_element(n, 1.0),
            eigen_generation: 0,
            generation: 0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            last: Vec::new(),
            best: None,
        })
    }

    /// Population size λ.
    pub fn population(&self) -> usize {
        self.lambda
    }

    /// Current step size σ.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Current mean (the recommended solution).
    pub fn mean(&self) -> Vec<f64> {
        self.mean.iter().copied().collect()
    }

    /// Generations told so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The best candidate told so far and its fitness.
    pub fn best(&self) -> Option<(f64, &[f64])> {
        self.best.as_ref().map(|(f, x)| (*f, x.as_slice()))
    }

    /// Everything needed to go on exactly where this stands (call between a `tell` and the next
    /// `ask`): [`CmaEs::restore`] with the same config continues with the same candidates an
    /// uninterrupted run would draw.
    pub fn state(&self) -> CmaEsState {
        CmaEsState {
            mean: self.mean.iter().copied().collect(),
            sigma: self.sigma,
            p_sigma: self.p_sigma.iter().copied().collect(),
            p_c: self.p_c.iter().copied().collect(),
            c: self.c.iter().copied().collect(),
            b: self.b.iter().copied().collect(),
            d: self.d.iter().copied().collect(),
            eigen_generation: self.eigen_generation,
            generation: self.generation,
            rng_word_pos: self.rng.get_word_pos().to_string(),
            best: self.best.clone(),
        }
    }

    /// CMA-ES with `config` (the one `state` was taken under) resumed from `state`.
    pub fn restore(config: &CmaEsConfig, state: &CmaEsState) -> Result<Self, PolicyError> {
        let mut es = Self::new(&state.mean, config)?;
        let n = es.n;
        let bad = |what: &str| PolicyError::Config(format!("CMA-ES state: {what}"));
        if state.p_sigma.len() != n
            || state.p_c.len() != n
            || state.d.len() != n
            || state.c.len() != n * n
            || state.b.len() != n * n
            || state.best.as_ref().is_some_and(|(_, x)| x.len() != n)
        {
            return Err(bad("vectors of the wrong length"));
        }
        if !(state.sigma.is_finite() && state.sigma > 0.0) {
            return Err(bad("sigma is not a positive number"));
        }
        es.sigma = state.sigma;
        es.p_sigma = DVector::from_column_slice(&state.p_sigma);
        es.p_c = DVector::from_column_slice(&state.p_c);
        es.c = DMatrix::from_column_slice(n, n, &state.c);
        es.b = DMatrix::from_column_slice(n, n, &state.b);
        es.d = DVector::from_column_slice(&state.d);
        es.eigen_generation = state.eigen_generation;
        es.generation = state.generation;
        es.rng.set_word_pos(
            state
                .rng_word_pos
                .parse()
                .map_err(|_| bad("rng_word_pos is not a number"))?,
        );
        es.best = state.best.clone();
        Ok(es)
    }

    /// λ new candidates `x = m + σ B D z`.
    pub fn ask(&mut self) -> Vec<Vec<f64>> {
        self.last = (0..self.lambda)
            .map(|_| DVector::from_fn(self.n, |_, _| normal(&mut self.rng)))
            .collect();
        self.last
            .iter()
            .map(|z| {
                let y = &self.b * self.d.component_mul(z);
                (&self.mean + y * self.sigma).iter().copied().collect()
            })
            .collect()
    }

    /// Updates from the fitnesses (higher is better) of the last `ask`'s candidates, in order.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<(), PolicyError> {
        if fitness.len() != self.last.len() || self.last.is_empty() {
            return Err(PolicyError::Config(format!(
                "tell needs {} fitnesses (one per asked candidate), got {}",
                self.last.len(),
                fitness.len()
            )));
        }
        if fitness.iter().any(|f| f.is_nan()) {
            return Err(PolicyError::Config("a fitness is NaN".into()));
        }
        let n = self.n as f64;
        let mut order: Vec<usize> = (0..fitness.len()).collect();
        // Best first; ties keep ask order, so the update is deterministic.
        order.sort_by(|&a, &b| fitness[b].total_cmp(&fitness[a]).then(a.cmp(&b)));
        let ys: Vec<DVector<f64>> = order[..self.mu]
            .iter()
            .map(|&i| &self.b * self.d.component_mul(&self.last[i]))
            .collect();
        let zs: Vec<&DVector<f64>> = order[..self.mu].iter().map(|&i| &self.last[i]).collect();
        let best_i = order[0];
        let best_x: Vec<f64> = (&self.mean + &ys[0] * self.sigma).iter().copied().collect();
        if self.best.as_ref().is_none_or(|(f, _)| fitness[best_i] > *f) {
            self.best = Some((fitness[best_i], best_x));
        }
        let mut y_w = DVector::zeros(self.n);
        let mut z_w = DVector::zeros(self.n);
        for (k, w) in self.weights.iter().enumerate() {
            y_w += &ys[k] * *w;
            z_w += zs[k] * *w;
        }
        self.mean += &y_w * self.sigma;
        // C^{-1/2} y_w = B z_w.
        let c_inv_sqrt_yw = &self.b * z_w;
        self.p_sigma = &self.p_sigma * (1.0 - self.c_sigma)
            + c_inv_sqrt_yw * (self.c_sigma * (2.0 - self.c_sigma) * self.mu_eff).sqrt();
        self.generation += 1;
        let ps_norm = self.p_sigma.norm();
        let denom = (1.0 - (1.0 - self.c_sigma).powi(2 * self.generation as i32)).sqrt();
        let h_sigma = if ps_norm / denom < (1.4 + 2.0 / (n + 1.0)) * self.chi_n {
            1.0
        } else {
            0.0
        };
        self.p_c = &self.p_c * (1.0 - self.c_c)
            + &y_w * (h_sigma * (self.c_c * (2.0 - self.c_c) * self.mu_eff).sqrt());
        let delta_h = (1.0 - h_sigma) * self.c_c * (2.0 - self.c_c);
        let mut c_new = &self.c * (1.0 - self.c1 - self.c_mu + self.c1 * delta_h);
        c_new += (&self.p_c * self.p_c.transpose()) * self.c1;
        for (k, w) in self.weights.iter().enumerate() {
            c_new += (&ys[k] * ys[k].transpose()) * (self.c_mu * w);
        }
        self.c = c_new;
        self.sigma *= ((self.c_sigma / self.d_sigma) * (ps_norm / self.chi_n - 1.0)).exp();
        let every = (1.0 / ((self.c1 + self.c_mu) * n * 10.0)).max(1.0) as u64;
        if self.generation - self.eigen_generation >= every {
            self.eigen_generation = self.generation;
            // Symmetrise against rounding, then C = B diag(d^2) B^T.
            let sym = (&self.c + self.c.transpose()) * 0.5;
            let eig = SymmetricEigen::new(sym.clone());
            self.c = sym;
            self.b = eig.eigenvectors;
            self.d = eig.eigenvalues.map(|v| v.max(1e-20).sqrt());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_resumed_from_its_json_state_draws_what_an_uninterrupted_one_draws() {
        let cfg = CmaEsConfig {
            population: 8,
            sigma0: 0.5,
            seed: 3,
        };
        let run = |es: &mut CmaEs, generations: usize| {
            for _ in 0..generations {
                let xs = es.ask();
                let f: Vec<f64> = xs.iter().map(|x| rosenbrock(x)).collect();
                es.tell(&f).unwrap();
            }
        };
        let mut whole = CmaEs::new(&[0.0; 5], &cfg).unwrap();
        run(&mut whole, 30);
        let mut first = CmaEs::new(&[0.0; 5], &cfg).unwrap();
        run(&mut first, 17);
        let json = serde_json::to_string(&first.state()).unwrap();
        let mut resumed = CmaEs::restore(&cfg, &serde_json::from_str(&json).unwrap()).unwrap();
        run(&mut resumed, 13);
        assert_eq!(resumed.state(), whole.state());
        assert_eq!(resumed.ask(), whole.ask());
        // A state of another size is refused, not trusted.
        let mut bad = first.state();
        bad.p_c.pop();
        assert!(CmaEs::restore(&cfg, &bad).is_err());
    }

    fn sphere(x: &[f64]) -> f64 {
        -x.iter().map(|v| (v - 1.0).powi(2)).sum::<f64>()
    }

    fn rosenbrock(x: &[f64]) -> f64 {
        -x.windows(2)
            .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
            .sum::<f64>()
    }

    fn run(f: fn(&[f64]) -> f64, n: usize, gens: usize, seed: u64) -> (f64, Vec<f64>) {
        let mut es = CmaEs::new(
            &vec![0.0; n],
            &CmaEsConfig {
                population: 0,
                sigma0: 0.5,
                seed,
            },
        )
        .unwrap();
        for _ in 0..gens {
            let xs = es.ask();
            let fit: Vec<f64> = xs.iter().map(|x| f(x)).collect();
            es.tell(&fit).unwrap();
        }
        let m = es.mean();
        (f(&m), m)
    }

    #[test]
    fn solves_sphere_and_rosenbrock() {
        let (f, m) = run(sphere, 10, 150, 1);
        assert!(f > -1e-8, "sphere {f} at {m:?}");
        // Rosenbrock needs the covariance to learn the curved valley.
        let (f, _) = run(rosenbrock, 6, 600, 2);
        assert!(f > -1e-6, "rosenbrock {f}");
    }

    #[test]
    fn same_seed_same_run_and_bad_input_is_refused() {
        assert_eq!(run(sphere, 5, 20, 7), run(sphere, 5, 20, 7));
        assert_ne!(run(sphere, 5, 20, 7).1, run(sphere, 5, 20, 8).1);
        let mut es = CmaEs::new(&[0.0; 3], &CmaEsConfig::default()).unwrap();
        let xs = es.ask();
        assert!(es.tell(&vec![0.0; xs.len() - 1]).is_err());
        assert!(es.tell(&vec![f64::NAN; xs.len()]).is_err());
        assert!(CmaEs::new(&[], &CmaEsConfig::default()).is_err());
        assert!(
            CmaEs::new(
                &[0.0],
                &CmaEsConfig {
                    sigma0: -1.0,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
