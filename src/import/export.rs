//! Graph IR to ONNX (opset 17, IR version 8).
//!
//! The exported file has a symbolic batch axis `N` on the input and outputs,
//! float32 initializers stored as little-endian `raw_data`, and the graph
//! metadata as `metadata_props`. Compressed weights are written dense
//! (`Weights::to_dense`), so any graph cnnpack runs can be checked with another
//! ONNX runtime.

use super::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use super::ImportError;
use crate::graph::{Graph, Op, Pool2d, Tensor, UnaryOp};
use prost::Message;

/// Serializes `graph` as an opset-17 ONNX model.
pub fn export_onnx(graph: &Graph) -> Result<Vec<u8>, ImportError> {
    let mut g = graph.clone();
    g.sort_and_validate()?;
    let shapes = g.infer_shapes(1)?;
    let mut out = GraphProto {
        name: Some("cnnpack".into()),
        ..Default::default()
    };
    let mut item = vec![0usize];
    item.extend(&g.input.item_shape);
    out.input.push(value_info(&g.input.name, &item));
    for o in &g.outputs {
        let s = shapes.get(o).cloned().unwrap_or_default();
        out.output.push(value_info(o, &s));
    }
    for node in &g.nodes {
        export_node(node, &mut out)?;
    }
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("cnnpack".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(out),
        metadata_props: g
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// A float tensor value with a symbolic first axis `N` (`shape[0]` is ignored).
fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| Dimension {
            dim_value: (i > 0).then_some(d as i64),
            dim_param: (i == 0).then(|| "N".to_string()),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn f32_init(name: String, t: &Tensor) -> TensorProto {
    let mut raw = Vec::with_capacity(t.data.len() * 4);
    for v in &t.data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn i64_init(name: String, v: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(v.len() * 8);
    for x in v {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn a_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn a_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

fn a_ints(name: &str, v: &[usize]) -> AttributeProto {
    a_i64s(name, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())
}

fn a_i64s(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn a_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::STRING),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn pool_attrs(p: &Pool2d) -> Vec<AttributeProto> {
    vec![
        a_ints("kernel_shape", &p.kernel),
        a_ints("strides", &p.stride),
        a_ints("pads", &p.pads),
        a_int("ceil_mode", p.ceil_mode as i64),
    ]
}

/// Appends the ONNX node (and its initializers) for one IR node.
fn export_node(node: &crate::graph::Node, g: &mut GraphProto) -> Result<(), ImportError> {
    let n = &node.name;
    let mut inputs = node.inputs.clone();
    let mut attrs = Vec::new();
    let init = |g: &mut GraphProto, t: TensorProto| {
        let name = t.name.clone().unwrap_or_default();
        g.initializer.push(t);
        name
    };
    let op_type = match &node.op {
        Op::Conv(c) => {
            let w = c.weight.to_dense();
            inputs.push(init(g, f32_init(format!("{n}.weight"), &w)));
            if let Some(b) = &c.bias {
                inputs.push(init(g, f32_init(format!("{n}.bias"), b)));
            }
            attrs = vec![
                a_ints("kernel_shape", &c.kernel),
                a_ints("strides", &c.stride),
                a_ints("pads", &c.pads),
                a_ints("dilations", &c.dilation),
                a_int("group", c.groups as i64),
            ];
            "Conv"
        }
        Op::Linear(l) => {
            let w = l.weight.to_dense();
            inputs.push(init(g, f32_init(format!("{n}.weight"), &w)));
            if let Some(b) = &l.bias {
                inputs.push(init(g, f32_init(format!("{n}.bias"), b)));
            }
            attrs = vec![a_int("transB", 1)];
            "Gemm"
        }
        Op::Relu => "Relu",
        Op::Sigmoid => "Sigmoid",
        Op::Identity => "Identity",
        Op::LeakyRelu { alpha } => {
            attrs = vec![a_float("alpha", *alpha)];
            "LeakyRelu"
        }
        Op::Clip { min, max } => {
            let scalar = |v: f32| Tensor {
                shape: vec![],
                data: vec![v],
            };
            let lo = if min.is_finite() {
                init(g, f32_init(format!("{n}.min"), &scalar(*min)))
            } else {
                String::new()
            };
            let hi = if max.is_finite() {
                init(g, f32_init(format!("{n}.max"), &scalar(*max)))
            } else {
                String::new()
            };
            // Absent optional inputs are empty names; trailing ones are left out.
            if !lo.is_empty() || !hi.is_empty() {
                inputs.push(lo);
            }
            if !hi.is_empty() {
                inputs.push(hi);
            }
            "Clip"
        }
        Op::MaxPool(p) => {
            attrs = pool_attrs(p);
            "MaxPool"
        }
        Op::AvgPool(p) => {
            attrs = pool_attrs(p);
            attrs.push(a_int("count_include_pad", p.count_include_pad as i64));
            "AveragePool"
        }
        Op::GlobalAvgPool => "GlobalAveragePool",
        Op::BatchNorm {
            scale,
            bias,
            mean,
            var,
            epsilon,
        } => {
            for (role, t) in [
                ("scale", scale),
                ("bias", bias),
                ("mean", mean),
                ("var", var),
            ] {
                inputs.push(init(g, f32_init(format!("{n}.{role}"), t)));
            }
            attrs = vec![a_float("epsilon", *epsilon)];
            "BatchNormalization"
        }
        Op::Add => "Add",
        Op::ConstBinary {
            kind,
            constant,
            constant_first,
        } => {
            let c = init(g, f32_init(format!("{n}.constant"), constant));
            if *constant_first {
                inputs.insert(0, c);
            } else {
                inputs.push(c);
            }
            kind.onnx_name()
        }
        Op::Binary(kind) => kind.onnx_name(),
        Op::Unary(UnaryOp::Silu) => {
            // x * sigmoid(x): two nodes.
            let s = format!("{n}.sigmoid");
            push(g, n, "Sigmoid", vec![inputs[0].clone()], &s, vec![]);
            inputs.push(s);
            "Mul"
        }
        Op::Unary(UnaryOp::Gelu { tanh: false }) => {
            // x * 0.5 * (1 + erf(x / sqrt 2)), as PyTorch exports it before opset 20.
            let scalar = |v: f32| Tensor {
                shape: vec![],
                data: vec![v],
            };
            let x = inputs[0].clone();
            let k = init(
                g,
                f32_init(
                    format!("{n}.rsqrt2"),
                    &scalar(std::f32::consts::FRAC_1_SQRT_2),
                ),
            );
            let one = init(g, f32_init(format!("{n}.one"), &scalar(1.0)));
            let half = init(g, f32_init(format!("{n}.half"), &scalar(0.5)));
            let v = |s: &str| format!("{n}.{s}");
            push(g, n, "Mul", vec![x.clone(), k], &v("scaled"), vec![]);
            push(g, n, "Erf", vec![v("scaled")], &v("erf"), vec![]);
            push(g, n, "Add", vec![v("erf"), one], &v("erf1"), vec![]);
            push(g, n, "Mul", vec![x, v("erf1")], &v("x_erf1"), vec![]);
            inputs = vec![v("x_erf1"), half];
            "Mul"
        }
        Op::Unary(UnaryOp::Gelu { tanh: true }) => {
            return Err(ImportError::Malformed(format!(
                "node '{n}': the tanh GELU has no opset-17 ONNX operator; export is not supported"
            )))
        }
        Op::Unary(u) => {
            match *u {
                UnaryOp::HardSigmoid { alpha, beta } => {
                    attrs = vec![a_float("alpha", alpha), a_float("beta", beta)];
                }
                UnaryOp::Elu { alpha } => attrs = vec![a_float("alpha", alpha)],
                _ => {}
            }
            u.onnx_name()
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
            attrs = vec![a_int("keepdims", *keepdims as i64)];
            // Opset 17: ReduceSum takes its axes as an input, the others as an attribute.
            if *kind == crate::graph::ReduceKind::Sum {
                inputs.push(init(g, i64_init(format!("{n}.axes"), &axes)));
            } else {
                attrs.push(a_i64s("axes", &axes));
            }
            kind.onnx_name()
        }
        Op::Transpose { perm } => {
            attrs = vec![a_ints("perm", perm)];
            "Transpose"
        }
        Op::Expand { shape } => {
            let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            inputs.push(init(g, i64_init(format!("{n}.shape"), &s)));
            "Expand"
        }
        Op::Reshape { target } => {
            inputs.push(init(g, i64_init(format!("{n}.shape"), target)));
            "Reshape"
        }
        Op::LayerNorm {
            axis,
            epsilon,
            scale,
            bias,
        } => {
            inputs.push(init(g, f32_init(format!("{n}.scale"), scale)));
            if let Some(b) = bias {
                inputs.push(init(g, f32_init(format!("{n}.bias"), b)));
            }
            attrs = vec![a_int("axis", *axis as i64), a_float("epsilon", *epsilon)];
            "LayerNormalization"
        }
        Op::Concat { axis } => {
            attrs = vec![a_int("axis", *axis as i64)];
            "Concat"
        }
        Op::Flatten { axis } => {
            attrs = vec![a_int("axis", *axis as i64)];
            "Flatten"
        }
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => {
            attrs = vec![
                a_int("size", *size as i64),
                a_float("alpha", *alpha),
                a_float("beta", *beta),
                a_float("bias", *bias),
            ];
            "LRN"
        }
        Op::Softmax => {
            attrs = vec![a_int("axis", -1)];
            "Softmax"
        }
        Op::Pad { pads, value, mode } => {
            let p: Vec<i64> = pads.iter().map(|&v| v as i64).collect();
            inputs.push(init(g, i64_init(format!("{n}.pads"), &p)));
            let v = Tensor {
                shape: vec![],
                data: vec![*value],
            };
            inputs.push(init(g, f32_init(format!("{n}.value"), &v)));
            attrs = vec![a_string("mode", mode.onnx_name())];
            "Pad"
        }
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            let v = |x: &[usize]| x.iter().map(|&d| d as i64).collect::<Vec<_>>();
            let axes: Vec<i64> = (0..starts.len() as i64).collect();
            // A negative step's IR end is ONNX's end + 1; ONNX spells "through index 0"
            // as the most negative end.
            let onnx_ends: Vec<i64> = ends
                .iter()
                .zip(steps)
                .map(|(&e, &s)| match (s < 0, e) {
                    (false, e) => e as i64,
                    (true, 0) => i64::MIN,
                    (true, e) => e as i64 - 1,
                })
                .collect();
            inputs.push(init(g, i64_init(format!("{n}.starts"), &v(starts))));
            inputs.push(init(g, i64_init(format!("{n}.ends"), &onnx_ends)));
            inputs.push(init(g, i64_init(format!("{n}.axes"), &axes)));
            inputs.push(init(g, i64_init(format!("{n}.steps"), steps)));
            "Slice"
        }
    };
    g.node.push(NodeProto {
        input: inputs,
        output: vec![node.output.clone()],
        name: Some(n.clone()),
        op_type: Some(op_type.into()),
        domain: None,
        attribute: attrs,
        doc_string: None,
    });
    Ok(())
}

/// Appends a helper node of a multi-node export (named after its IR node and output).
fn push(
    g: &mut GraphProto,
    node: &str,
    op_type: &str,
    input: Vec<String>,
    output: &str,
    attribute: Vec<AttributeProto>,
) {
    g.node.push(NodeProto {
        input,
        output: vec![output.to_string()],
        name: Some(format!("{node}/{output}")),
        op_type: Some(op_type.into()),
        domain: None,
        attribute,
        doc_string: None,
    });
}
