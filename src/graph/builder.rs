//! A builder for making graphs in code (the zoo, tests, benches).

use super::{Conv2d, Graph, GraphError, GraphInput, Linear, Node, Op, Pool2d, Rng, Tensor};
use crate::weights::Weights;
use std::collections::BTreeMap;

/// Builds a graph node by node; each method returns the name of the value it made.
///
/// ```
/// use cnnpack::graph::GraphBuilder;
/// let mut b = GraphBuilder::new("data", &[1, 28, 28], 7);
/// let x = b.input();
/// let x = b.conv(&x, 20, 5, 1, 0, 1);
/// let x = b.max_pool(&x, 2, 2, 0);
/// let x = b.flatten(&x);
/// let x = b.linear(&x, 10);
/// let g = b.finish(&[&x]).unwrap();
/// assert_eq!(g.infer_shapes(2).unwrap()[&x], vec![2, 10]);
/// ```
pub struct GraphBuilder {
    graph: Graph,
    rng: Rng,
    counter: usize,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl GraphBuilder {
    /// A builder whose input `name` has per-item shape `item_shape`; weights are
    /// He-initialised from `seed`.
    pub fn new(name: &str, item_shape: &[usize], seed: u64) -> GraphBuilder {
        let mut shapes = BTreeMap::new();
        let mut s = vec![1];
        s.extend(item_shape);
        shapes.insert(name.to_string(), s);
        GraphBuilder {
            graph: Graph {
                input: GraphInput {
                    name: name.into(),
                    item_shape: item_shape.to_vec(),
                    declared_batch: None,
                },
                nodes: vec![],
                outputs: vec![],
                metadata: BTreeMap::new(),
            },
            rng: Rng::new(seed),
            counter: 0,
            shapes,
        }
    }

    /// Name of the graph input.
    pub fn input(&self) -> String {
        self.graph.input.name.clone()
    }

    /// Shape (at batch 1) of a value made so far.
    pub fn shape(&self, value: &str) -> &[usize] {
        &self.shapes[value]
    }

    /// Sets a metadata entry.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.graph.metadata.insert(key.into(), value.into());
    }

    /// Appends a node with an explicit name; returns its output name (the node name).
    pub fn push(&mut self, name: &str, op: Op, inputs: &[&str]) -> String {
        let node = Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: name.into(),
        };
        // Shapes are tracked at batch 1 so layer sizes can be derived while building.
        let ins: Vec<Vec<usize>> = inputs
            .iter()
            .map(|v| self.shapes.get(*v).cloned().unwrap_or_default())
            .collect();
        let shape = shape_of(&node, &ins);
        self.shapes.insert(name.into(), shape);
        self.graph.nodes.push(node);
        name.into()
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Square conv with He-initialised weights and zero bias.
    pub fn conv(
        &mut self,
        x: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> String {
        let name = self.fresh("conv");
        self.conv_named(&name, x, out, k, stride, pad, groups)
    }

    /// As `conv`, with a given node name.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_named(
        &mut self,
        name: &str,
        x: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> String {
        let cin = self.shapes[x][1];
        let fan_in = cin / groups * k * k;
        let weight = self
            .rng
            .normal_tensor(vec![out, cin / groups, k, k], (2.0 / fan_in as f32).sqrt());
        let op = Op::Conv(Conv2d {
            kernel: [k, k],
            stride: [stride, stride],
            pads: [pad; 4],
            dilation: [1, 1],
            groups,
            weight: Weights::Dense(weight),
            bias: Some(Tensor::zeros(vec![out])),
        });
        self.push(name, op, &[x])
    }

    /// Square conv without bias (as before a BatchNorm), with a generated name.
    pub fn conv_no_bias(
        &mut self,
        x: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> String {
        let name = self.fresh("conv");
        let y = self.conv_named(&name, x, out, k, stride, pad, 1);
        if let Some(Node {
            op: Op::Conv(c), ..
        }) = self.graph.nodes.last_mut()
        {
            c.bias = None;
        }
        y
    }

    /// Fully connected layer with He-initialised weights and zero bias.
    pub fn linear(&mut self, x: &str, out: usize) -> String {
        let name = self.fresh("fc");
        self.linear_named(&name, x, out)
    }

    /// As `linear`, with a given node name.
    pub fn linear_named(&mut self, name: &str, x: &str, out: usize) -> String {
        let k = self.shapes[x][1];
        let weight = self
            .rng
            .normal_tensor(vec![out, k], (2.0 / k as f32).sqrt());
        let op = Op::Linear(Linear {
            weight: Weights::Dense(weight),
            bias: Some(Tensor::zeros(vec![out])),
        });
        self.push(name, op, &[x])
    }

    /// Batch normalisation with identity statistics (gamma 1, beta 0, mean 0, var 1).
    pub fn batch_norm(&mut self, x: &str) -> String {
        let c = self.shapes[x][1];
        let name = self.fresh("bn");
        let op = Op::BatchNorm {
            scale: Tensor::full(vec![c], 1.0),
            bias: Tensor::zeros(vec![c]),
            mean: Tensor::zeros(vec![c]),
            var: Tensor::full(vec![c], 1.0),
            epsilon: 1e-5,
        };
        self.push(&name, op, &[x])
    }

    /// ReLU.
    pub fn relu(&mut self, x: &str) -> String {
        let name = self.fresh("relu");
        self.push(&name, Op::Relu, &[x])
    }

    /// Square max pooling.
    pub fn max_pool(&mut self, x: &str, k: usize, stride: usize, pad: usize) -> String {
        let name = self.fresh("maxpool");
        self.push(&name, Op::MaxPool(pool(k, stride, pad, false)), &[x])
    }

    /// Square max pooling with ONNX `ceil_mode=1`.
    pub fn max_pool_ceil(&mut self, x: &str, k: usize, stride: usize) -> String {
        let name = self.fresh("maxpool");
        self.push(&name, Op::MaxPool(pool(k, stride, 0, true)), &[x])
    }

    /// Square average pooling (padding not counted).
    pub fn avg_pool(&mut self, x: &str, k: usize, stride: usize, pad: usize) -> String {
        let name = self.fresh("avgpool");
        self.push(&name, Op::AvgPool(pool(k, stride, pad, false)), &[x])
    }

    /// Global average pooling.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        let name = self.fresh("gap");
        self.push(&name, Op::GlobalAvgPool, &[x])
    }

    /// Element-wise sum.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        let name = self.fresh("add");
        self.push(&name, Op::Add, &[a, b])
    }

    /// Channel concatenation.
    pub fn concat(&mut self, xs: &[&str]) -> String {
        let name = self.fresh("concat");
        self.push(&name, Op::Concat { axis: 1 }, xs)
    }

    /// Flatten to `[N, rest]`.
    pub fn flatten(&mut self, x: &str) -> String {
        let name = self.fresh("flatten");
        self.push(&name, Op::Flatten { axis: 1 }, &[x])
    }

    /// AlexNet-style LRN.
    pub fn lrn(&mut self, x: &str, size: usize) -> String {
        let name = self.fresh("lrn");
        self.push(
            &name,
            Op::Lrn {
                size,
                alpha: 1e-4,
                beta: 0.75,
                bias: 1.0,
            },
            &[x],
        )
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: &str) -> String {
        let name = self.fresh("softmax");
        self.push(&name, Op::Softmax, &[x])
    }

    /// Finishes with the given outputs; validates the graph.
    pub fn finish(mut self, outputs: &[&str]) -> Result<Graph, GraphError> {
        self.graph.outputs = outputs.iter().map(|s| s.to_string()).collect();
        self.graph.sort_and_validate()?;
        self.graph.infer_shapes(1)?;
        Ok(self.graph)
    }
}

fn pool(k: usize, stride: usize, pad: usize, ceil_mode: bool) -> Pool2d {
    Pool2d {
        kernel: [k, k],
        stride: [stride, stride],
        pads: [pad; 4],
        ceil_mode,
        count_include_pad: false,
    }
}

/// Shape of one node's output from its input shapes (empty on error; `finish` reports it).
fn shape_of(node: &Node, ins: &[Vec<usize>]) -> Vec<usize> {
    let refs: Vec<&Vec<usize>> = ins.iter().collect();
    super::shape::node_shape(node, &refs).unwrap_or_default()
}
