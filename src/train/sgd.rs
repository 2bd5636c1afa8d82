//! SGD with momentum and weight decay (Caffe semantics), learning-rate schedules,
//! and the weight masks INQ and DNS retrain under.

pub use crate::backend::training::{check_trainable, Masks};

use super::backward::Grads;
use super::TrainError;
use crate::backend::training::dense_weight_mut;
use crate::graph::{Graph, Op};
use std::collections::HashMap;

/// Learning-rate policy; `lr(base, iter)` gives the rate at iteration `iter`
/// (0-based, counted over the whole run as in Caffe).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `base`.
    Fixed,
    /// `base * gamma^(iter / step_size)` (Caffe "step").
    Step {
        /// Factor per step.
        gamma: f32,
        /// Iterations per step.
        step_size: usize,
    },
    /// `base * gamma^(number of milestones <= iter)` (Caffe "multistep").
    MultiStep {
        /// Factor per milestone.
        gamma: f32,
        /// Iterations at which the rate drops, ascending.
        milestones: Vec<usize>,
    },
    /// `base * (1 + cos(pi * min(iter, total) / total)) / 2`.
    Cosine {
        /// Iterations until the rate reaches 0.
        total: usize,
    },
    /// `base * (1 + gamma * iter)^-power` (Caffe "inv", used by the LeNet solver and DNS).
    Inv {
        /// Decay speed (Caffe LeNet: 1e-4).
        gamma: f32,
        /// Exponent (Caffe LeNet: 0.75).
        power: f32,
    },
}

impl Schedule {
    /// Learning rate at iteration `iter` for base rate `base`.
    pub fn lr(&self, base: f32, iter: usize) -> f32 {
        let b = base as f64;
        let r = match self {
            Schedule::Fixed => b,
            Schedule::Step { gamma, step_size } => {
                b * (*gamma as f64).powi((iter / (*step_size).max(1)) as i32)
            }
            Schedule::MultiStep { gamma, milestones } => {
                b * (*gamma as f64).powi(milestones.iter().filter(|&&m| m <= iter).count() as i32)
            }
            Schedule::Cosine { total } => {
                let t = iter.min(*total) as f64 / (*total).max(1) as f64;
                b * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Inv { gamma, power } => {
                b * (1.0 + *gamma as f64 * iter as f64).powf(-(*power as f64))
            }
        };
        r as f32
    }
}

/// SGD with momentum and weight decay, Caffe semantics:
/// `v = momentum * v + lr * (g + weight_decay * w); w -= v`.
///
/// Parameters: conv/fc weights and biases, BatchNorm scale and bias (all with the same
/// learning rate and decay). Velocities are kept per tensor, keyed `"{node}.{role}"`.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Momentum (0.9 in Caffe's LeNet solver).
    pub momentum: f32,
    /// L2 weight decay (5e-4 in Caffe's LeNet solver).
    pub weight_decay: f32,
    velocity: HashMap<String, Vec<f32>>,
}

impl Sgd {
    /// An optimiser with zero velocities.
    pub fn new(momentum: f32, weight_decay: f32) -> Sgd {
        Sgd {
            momentum,
            weight_decay,
            velocity: HashMap::new(),
        }
    }

    /// The velocity of parameter `"{node}.{role}"` (role `weight`, `bias`, `scale`).
    pub fn velocity(&self, key: &str) -> Option<&[f32]> {
        self.velocity.get(key).map(|v| v.as_slice())
    }

    /// Applies one update with learning rate `lr` to every parameter that has a
    /// gradient in `grads`, honouring the gradient masks of `masks` (see `Masks`).
    pub fn step(
        &mut self,
        graph: &mut Graph,
        grads: &Grads,
        masks: &Masks,
        lr: f32,
    ) -> Result<(), TrainError> {
        for node in &mut graph.nodes {
            let Some(g) = grads.get(&node.name) else {
                continue;
            };
            let name = node.name.clone();
            match &mut node.op {
                Op::Conv(_) | Op::Linear(_) => {
                    let gmask = masks.grad.get(&name).map(|m| m.as_slice());
                    let w = dense_weight_mut(&name, &mut node.op)?;
                    self.update(
                        &format!("{name}.weight"),
                        &mut w.data,
                        &g.weight.data,
                        gmask,
                        lr,
                    );
                    let bias = match &mut node.op {
                        Op::Conv(c) => c.bias.as_mut(),
                        Op::Linear(l) => l.bias.as_mut(),
                        _ => None,
                    };
                    if let (Some(b), Some(gb)) = (bias, &g.bias) {
                        self.update(&format!("{name}.bias"), &mut b.data, &gb.data, None, lr);
                    }
                }
                Op::BatchNorm { scale, bias, .. } => {
                    self.update(
                        &format!("{name}.scale"),
                        &mut scale.data,
                        &g.weight.data,
                        None,
                        lr,
                    );
                    if let Some(gb) = &g.bias {
                        self.update(&format!("{name}.bias"), &mut bias.data, &gb.data, None, lr);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn update(&mut self, key: &str, w: &mut [f32], g: &[f32], mask: Option<&[bool]>, lr: f32) {
        let v = self
            .velocity
            .entry(key.to_string())
            .or_insert_with(|| vec![0.0; w.len()]);
        let (m, wd) = (self.momentum, self.weight_decay);
        for i in 0..w.len() {
            if mask.is_some_and(|mk| !mk[i]) {
                continue; // frozen entry: no gradient, no decay, no momentum
            }
            v[i] = m * v[i] + lr * (g[i] + wd * w[i]);
            w[i] -= v[i];
        }
    }
}
