//! C: `a = tanh(W x + b)`, rescaled from [-1, 1] into the action box.

use dreamgym_envs::{Space, Value};

use crate::{Policy, PolicyError};

/// A linear controller over a feature vector (World Models: `x = [z, h]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearController {
    inputs: usize,
    outputs: usize,
    /// `W` row-major (`outputs x inputs`), then `b`.
    params: Vec<f32>,
    low: Vec<f32>,
    high: Vec<f32>,
}

impl LinearController {
    /// Parameters needed for `inputs` features and an action box of `outputs` values.
    pub fn param_count(inputs: usize, outputs: usize) -> usize {
        inputs * outputs + outputs
    }

    /// A controller with `params` (`W` row-major, then `b`) acting in `action_space`, which must
    /// be a bounded Box.
    pub fn new(inputs: usize, action_space: &Space, params: Vec<f32>) -> Result<Self, PolicyError> {
        let b = action_space
            .as_box()
            .filter(|b| b.is_bounded())
            .ok_or_else(|| {
                PolicyError::Incompatible(
                    "the linear controller needs a bounded Box action space".into(),
                )
            })?;
        let outputs = b.len();
        if params.len() != Self::param_count(inputs, outputs) {
            return Err(PolicyError::Config(format!(
                "{} parameters given, {} needed for {inputs} inputs and {outputs} actions",
                params.len(),
                Self::param_count(inputs, outputs)
            )));
        }
        if params.iter().any(|p| !p.is_finite()) {
            return Err(PolicyError::Config(
                "controller parameters must be finite".into(),
            ));
        }
        Ok(Self {
            inputs,
            outputs,
            params,
            low: b.low.clone(),
            high: b.high.clone(),
        })
    }

    /// Inputs expected.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The parameters (`W` then `b`).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The action for features `x` (length `inputs`).
    pub fn act(&self, x: &[f32]) -> Value {
        let mut a = vec![0.0; self.outputs];
        self.act_into(x, &mut a);
        Value::F32(a)
    }

    /// The action for features `x`, written into `out` (`min(out.len(), outputs)` values).
    pub fn act_into(&self, x: &[f32], out: &mut [f32]) {
        let (w, b) = self.params.split_at(self.inputs * self.outputs);
        for (o, a) in out.iter_mut().enumerate().take(self.outputs) {
            let row = &w[o * self.inputs..(o + 1) * self.inputs];
            let s: f32 = row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b[o];
            let t = s.tanh();
            *a = self.low[o] + (t + 1.0) * 0.5 * (self.high[o] - self.low[o]);
        }
    }
}

/// C acting directly on float observations (features such as the dream's `[z, h]`, or a state
/// vector): the observation must hold exactly `inputs` floats.
impl Policy for LinearController {
    fn describe(&self) -> String {
        format!("linear controller ({} inputs)", self.inputs)
    }

    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        Ok(())
    }

    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        match obs.as_f32() {
            Some(x) if x.len() == self.inputs => Ok(LinearController::act(self, x)),
            Some(x) => Err(PolicyError::Incompatible(format!(
                "the linear controller takes {} features, the observation has {}",
                self.inputs,
                x.len()
            ))),
            None => Err(PolicyError::Incompatible(format!(
                "the linear controller needs float observations, got {}",
                obs.describe()
            ))),
        }
    }

    fn fork(&self) -> Box<dyn Policy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_envs::BoxSpace;

    #[test]
    fn acts_linearly_through_tanh_into_the_box() {
        let space = Space::Box(BoxSpace::new(vec![-1.0, 0.0], vec![1.0, 1.0]));
        // W = [[1, 0], [0, 2]], b = [0, -1]
        let c = LinearController::new(2, &space, vec![1.0, 0.0, 0.0, 2.0, 0.0, -1.0]).unwrap();
        let Value::F32(a) = c.act(&[0.5, 0.5]) else {
            panic!()
        };
        assert!((a[0] - 0.5f32.tanh()).abs() < 1e-6);
        assert!((a[1] - (0.0f32.tanh() + 1.0) / 2.0).abs() < 1e-6);
        assert!(space.contains(&c.act(&[100.0, -100.0])));
        assert!(LinearController::new(2, &space, vec![0.0; 5]).is_err());
        let unbounded = Space::Box(BoxSpace::uniform(vec![2], f32::NEG_INFINITY, f32::INFINITY));
        assert!(LinearController::new(2, &unbounded, vec![0.0; 6]).is_err());
    }

    #[test]
    fn papers_controller_has_867_parameters() {
        assert_eq!(LinearController::param_count(32 + 256, 3), 867);
    }
}
