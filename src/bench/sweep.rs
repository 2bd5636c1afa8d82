//! Speed-up against one compression parameter: the model is compressed in-process at each
//! value (sketch bases m, INQ bits b, or sparse density), benchmarked next to its dense
//! origin on the same device in the same run, and summarised per value.
//!
//! The compressions here are the one-shot ones (no retraining): speed depends only on
//! the encoding and its size, not on how accurate the weights are, so retraining would
//! change nothing that is timed.

use super::compare::Comparison;
use crate::compress::dns::{sparsify_graph, SparsePolicy};
use crate::compress::inq::{inq_graph, InqError, InqOptions};
use crate::compress::{sketch_graph, CompressError, SketchOptions};
use crate::graph::{Graph, Op, Tensor};
use crate::weights::Weights;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Errors of a sweep; each names the kind and value at fault.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep kind is not one of sketch, inq, sparse.
    #[error("unknown sweep '{0}': use sketch, inq or sparse")]
    UnknownKind(String),
    /// A value is outside what the kind accepts.
    #[error("{kind} sweep: value {value} is invalid: {reason}")]
    Value {
        /// Sweep kind.
        kind: SweepKind,
        /// The offending value.
        value: f64,
        /// Why.
        reason: &'static str,
    },
    /// Sketching or sparsifying failed.
    #[error("{kind} sweep at {value}: {source}")]
    Compress {
        /// Sweep kind.
        kind: SweepKind,
        /// Value being compressed.
        value: f64,
        /// The compression error.
        source: CompressError,
    },
    /// INQ failed.
    #[error("inq sweep at {value} bits: {source}")]
    Inq {
        /// Bits being compressed.
        value: f64,
        /// The INQ error.
        source: InqError,
    },
}

/// Which compression parameter a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKind {
    /// Network sketching, refined, every conv/fc layer: the value is the bases m.
    Sketch,
    /// INQ in one step (no retraining), every conv/fc layer: the value is the bits b.
    Inq,
    /// Magnitude pruning of every conv/fc layer to a density, stored as CSR: the value
    /// is the density (kept fraction of weights, 0 < d <= 1).
    Sparse,
}

impl SweepKind {
    /// The values swept when none are given: m = 1..4, b = 2..5, densities 0.5..0.05.
    pub fn default_values(self) -> Vec<f64> {
        match self {
            SweepKind::Sketch => vec![1.0, 2.0, 3.0, 4.0],
            SweepKind::Inq => vec![2.0, 3.0, 4.0, 5.0],
            SweepKind::Sparse => vec![0.5, 0.25, 0.1, 0.05],
        }
    }

    /// The swept parameter's axis label.
    pub fn parameter(self) -> &'static str {
        match self {
            SweepKind::Sketch => "bases m",
            SweepKind::Inq => "bits b",
            SweepKind::Sparse => "density (kept fraction of weights)",
        }
    }
}

impl fmt::Display for SweepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SweepKind::Sketch => "sketch",
            SweepKind::Inq => "inq",
            SweepKind::Sparse => "sparse",
        })
    }
}

impl FromStr for SweepKind {
    type Err = SweepError;
    fn from_str(s: &str) -> Result<Self, SweepError> {
        match s {
            "sketch" => Ok(SweepKind::Sketch),
            "inq" => Ok(SweepKind::Inq),
            "sparse" | "dns" => Ok(SweepKind::Sparse),
            other => Err(SweepError::UnknownKind(other.to_string())),
        }
    }
}

/// One value of a sweep on one device at one batch size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Sweep kind.
    pub kind: SweepKind,
    /// The parameter value (m, b or density).
    pub value: f64,
    /// The comparison against the dense model at this value.
    pub comparison: Comparison,
}

/// Compresses every conv/fc layer of a (folded, dense) `graph` at `value`.
pub fn compress(graph: &Graph, kind: SweepKind, value: f64) -> Result<Graph, SweepError> {
    let bad = |reason| SweepError::Value {
        kind,
        value,
        reason,
    };
    match kind {
        SweepKind::Sketch => {
            if value < 1.0 || value.fract() != 0.0 {
                return Err(bad("the bases m must be a whole number >= 1"));
            }
            let opts = SketchOptions {
                bases: value as usize,
                refined: true,
                ..Default::default()
            };
            sketch_graph(graph, &opts)
                .map(|(g, _)| g)
                .map_err(|source| SweepError::Compress {
                    kind,
                    value,
                    source,
                })
        }
        SweepKind::Inq => {
            if !(2.0..=5.0).contains(&value) || value.fract() != 0.0 {
                return Err(bad("the bits b must be a whole number in 2..=5"));
            }
            let opts = InqOptions {
                bits: value as u32,
                ..Default::default()
            };
            inq_graph(graph, &opts, None, &mut |_| {})
                .map(|(g, _)| g)
                .map_err(|source| SweepError::Inq { value, source })
        }
        SweepKind::Sparse => {
            if !(value > 0.0 && value <= 1.0) {
                return Err(bad("the density must be in (0, 1]"));
            }
            let mut pruned = graph.clone();
            for node in &mut pruned.nodes {
                let weight = match &mut node.op {
                    Op::Conv(c) => &mut c.weight,
                    Op::Linear(l) => &mut l.weight,
                    _ => continue,
                };
                if let Weights::Dense(t) = weight {
                    prune_to_density(t, value);
                }
            }
            sparsify_graph(&pruned, &SparsePolicy::All)
                .map(|(g, _)| g)
                .map_err(|source| SweepError::Compress {
                    kind,
                    value,
                    source,
                })
        }
    }
}

/// Zeroes all but the `density` fraction of largest-magnitude weights (ties kept).
fn prune_to_density(t: &mut Tensor, density: f64) {
    let n = t.data.len();
    let keep = ((n as f64 * density).round() as usize).clamp(1, n.max(1));
    if keep >= n {
        return;
    }
    let mut mags: Vec<f32> = t.data.iter().map(|w| w.abs()).collect();
    // The keep-th largest magnitude is the threshold.
    let (_, &mut threshold, _) = mags.select_nth_unstable_by(n - keep, f32::total_cmp);
    for w in &mut t.data {
        if w.abs() < threshold {
            *w = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_largest() {
        let mut t = Tensor {
            shape: vec![7],
            data: vec![0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 1.0],
        };
        prune_to_density(&mut t, 3.0 / 7.0);
        assert_eq!(t.data, vec![0.0, -5.0, 0.0, 2.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn compress_each_kind_on_lenet() {
        let g = crate::graph::fold(crate::zoo::build("lenet5", 0).expect("zoo model builds"))
            .expect("lenet5 folds");
        for kind in [SweepKind::Sketch, SweepKind::Inq, SweepKind::Sparse] {
            let v = kind.default_values()[1];
            let c = compress(&g, kind, v).expect("compresses");
            let encodings: Vec<&str> = c
                .nodes
                .iter()
                .filter_map(|n| n.op.weights())
                .map(|w| w.encoding())
                .collect();
            assert!(!encodings.is_empty());
            assert!(
                encodings.iter().all(|e| *e != "dense"),
                "{kind}: {encodings:?}"
            );
        }
        assert!(compress(&g, SweepKind::Inq, 7.0).is_err());
        assert!(compress(&g, SweepKind::Sparse, 0.0).is_err());
        assert!("bogus".parse::<SweepKind>().is_err());
    }
}
