//! ONNX import and export: every shipped model (names, shapes, op counts,
//! parameter counts, metadata), hand-made models for each supported op and
//! attribute form, malformed files (each must be an `Err`, never a panic), and
//! export -> import round trips.

mod common;
use cnnpack::graph::{BinaryKind, Graph, GraphBuilder, GraphError, Op, PadMode, Tensor};
use cnnpack::import::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use cnnpack::import::{export_onnx, load_onnx, parse_onnx, ImportError};
use common::data_dir;
use prost::Message;
use std::collections::BTreeMap;

/// Asserts two graphs are equal, naming the first node that differs.
fn assert_same_graph(a: &Graph, b: &Graph, what: &str) {
    assert_eq!(a.input, b.input, "{what}: input");
    assert_eq!(a.outputs, b.outputs, "{what}: outputs");
    assert_eq!(a.metadata, b.metadata, "{what}: metadata");
    assert_eq!(a.nodes.len(), b.nodes.len(), "{what}: node count");
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        if x != y {
            let short = |n: &cnnpack::graph::Node| {
                let s = format!("{n:?}");
                s.chars().take(400).collect::<String>()
            };
            panic!("{what}: node differs\n{}\n{}", short(x), short(y));
        }
    }
}

fn op_counts(g: &Graph) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for n in &g.nodes {
        *m.entry(n.op.kind()).or_insert(0) += 1;
    }
    m
}

fn weight_stats(g: &Graph) -> (usize, usize) {
    let mut total = 0;
    let mut nonzero = 0;
    for n in &g.nodes {
        if let Some(w) = n.op.weights() {
            let d = w.to_dense();
            total += d.len();
            nonzero += d.nonzeros();
        }
    }
    (total, nonzero)
}

fn nonzero_params(g: &Graph) -> usize {
    g.nodes
        .iter()
        .map(|n| {
            n.op.weights().map_or(0, |w| w.to_dense().nonzeros())
                + n.op
                    .constants()
                    .iter()
                    .map(|(_, t)| t.nonzeros())
                    .sum::<usize>()
        })
        .sum()
}

struct Expect<'a> {
    file: &'a str,
    input: &'a str,
    item: &'a [usize],
    batch: Option<usize>,
    output: &'a str,
    out_item: &'a [usize],
    ops: &'a [(&'a str, usize)],
    params: usize,
    nonzero: Option<usize>,
    meta: &'a [&'a str],
}

fn check_model(d: &std::path::Path, e: &Expect) -> Graph {
    let g = load_onnx(&d.join(e.file)).unwrap_or_else(|err| panic!("{}: {err}", e.file));
    assert_eq!(g.input.name, e.input, "{}", e.file);
    assert_eq!(g.input.item_shape, e.item, "{}", e.file);
    assert_eq!(g.input.declared_batch, e.batch, "{}", e.file);
    assert_eq!(g.outputs, vec![e.output.to_string()], "{}", e.file);
    for batch in [1, 3] {
        let s = g.infer_shapes(batch).expect("shapes");
        let mut want = vec![batch];
        want.extend(e.out_item);
        assert_eq!(s[e.output], want, "{} at batch {batch}", e.file);
    }
    let want: BTreeMap<&str, usize> = e.ops.iter().copied().collect();
    assert_eq!(op_counts(&g), want, "{}", e.file);
    assert_eq!(g.parameters(), e.params, "{}", e.file);
    if let Some(nz) = e.nonzero {
        assert_eq!(nonzero_params(&g), nz, "{} nonzero parameters", e.file);
    }
    for k in e.meta {
        assert!(g.metadata.contains_key(*k), "{}: metadata key {k}", e.file);
    }
    g.validate().expect("imported graph validates");
    g
}

const LENET_META: &[&str] = &[
    "preprocess.color_order",
    "preprocess.scale",
    "preprocess.mean",
    "preprocess.std",
    "labels",
];

#[test]
fn squeezenet() {
    let Some(d) = data_dir() else { return };
    let g = check_model(
        &d,
        &Expect {
            file: "imagenet/squeezenet1.0/squeezenet1.0.onnx",
            input: "data",
            item: &[3, 227, 227],
            batch: None,
            output: "prob",
            out_item: &[1000],
            ops: &[
                ("Concat", 8),
                ("Conv", 26),
                ("Flatten", 1),
                ("GlobalAveragePool", 1),
                ("MaxPool", 3),
                ("Relu", 26),
                ("Softmax", 1),
            ],
            params: 1_248_424,
            nonzero: None,
            meta: &[
                "preprocess.color_order",
                "preprocess.scale",
                "preprocess.mean",
                "preprocess.std",
                "preprocess.resize",
                "preprocess.crop",
                "labels",
            ],
        },
    );
    // README: 415,921 of 1,244,448 weights are nonzero.
    assert_eq!(weight_stats(&g), (1_244_448, 415_921));
    assert_eq!(g.metadata["preprocess.color_order"], "BGR");
    assert_eq!(g.metadata["preprocess.mean"], "104,117,123");
    let pools: Vec<_> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::MaxPool(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert!(pools
        .iter()
        .all(|p| p.ceil_mode && p.kernel == [3, 3] && p.stride == [2, 2]));
    let s = g.infer_shapes(1).unwrap();
    let last_conv = g
        .nodes
        .iter()
        .rev()
        .find(|n| matches!(n.op, Op::Conv(_)))
        .unwrap();
    assert_eq!(s[&last_conv.output], vec![1, 1000, 15, 15]);
}

#[test]
fn lenet_models() {
    let Some(d) = data_dir() else { return };
    let lenet5_ops: &[(&str, usize)] = &[
        ("Conv", 2),
        ("Flatten", 1),
        ("Linear", 2),
        ("MaxPool", 2),
        ("Relu", 1),
        ("Softmax", 1),
    ];
    let lenet300_ops: &[(&str, usize)] =
        &[("Flatten", 1), ("Linear", 3), ("Relu", 2), ("Softmax", 1)];
    for (file, ops, params, nonzero) in [
        ("lenet/lenet5_original.onnx", lenet5_ops, 431_080, None),
        ("lenet/lenet5_sparse.onnx", lenet5_ops, 431_080, Some(3_993)),
        (
            "lenet/lenet300100_original.onnx",
            lenet300_ops,
            266_610,
            None,
        ),
        (
            "lenet/lenet300100_sparse.onnx",
            lenet300_ops,
            266_610,
            Some(4_988),
        ),
    ] {
        let g = check_model(
            &d,
            &Expect {
                file,
                input: "data",
                item: &[1, 28, 28],
                batch: None,
                output: "prob",
                out_item: &[10],
                ops,
                params,
                nonzero,
                meta: LENET_META,
            },
        );
        assert_eq!(g.metadata["preprocess.scale"], "0.00390625");
    }
}

#[test]
fn mnist8_ir3_with_initializer_inputs() {
    let Some(d) = data_dir() else { return };
    let g = check_model(
        &d,
        &Expect {
            file: "onnx-zoo/mnist-8.onnx",
            input: "Input3",
            item: &[1, 28, 28],
            batch: Some(1),
            output: "Plus214_Output_0",
            out_item: &[10],
            ops: &[
                ("Conv", 2),
                ("Flatten", 1),
                ("Linear", 1),
                ("MaxPool", 2),
                ("Relu", 2),
            ],
            params: 5994,
            nonzero: None,
            meta: &[],
        },
    );
    // auto_pad=SAME_UPPER with a 5x5 kernel, stride 1: two pixels each side.
    for n in &g.nodes {
        if let Op::Conv(c) = &n.op {
            assert_eq!(c.pads, [2, 2, 2, 2], "{}", n.name);
        }
    }
    let s = g.infer_shapes(1).unwrap();
    let pools: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::MaxPool(_)))
        .map(|n| s[&n.output].clone())
        .collect();
    assert_eq!(pools, vec![vec![1, 8, 14, 14], vec![1, 16, 4, 4]]);
}

#[test]
fn resnet20() {
    let Some(d) = data_dir() else { return };
    let g = check_model(
        &d,
        &Expect {
            file: "cifar/resnet20.onnx",
            input: "input",
            item: &[3, 32, 32],
            batch: None,
            output: "logits",
            out_item: &[10],
            ops: &[
                ("Add", 9),
                ("BatchNormalization", 19),
                ("Conv", 19),
                ("Flatten", 1),
                ("GlobalAveragePool", 1),
                ("Linear", 1),
                ("Pad", 2),
                ("Relu", 19),
                ("Slice", 2),
            ],
            params: 271_098,
            nonzero: None,
            meta: &["preprocess.mean", "preprocess.std", "labels"],
        },
    );
    let s = g.infer_shapes(4).unwrap();
    for n in &g.nodes {
        match &n.op {
            Op::Slice { steps, .. } => {
                assert_eq!(steps, &vec![1, 1, 2, 2]);
                let x = &s[&n.inputs[0]];
                assert_eq!(s[&n.output], vec![4, x[1], x[2] / 2, x[3] / 2]);
            }
            Op::BatchNorm { epsilon, .. } => assert_eq!(*epsilon, 1e-5),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-made models.

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}
fn attr_is(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::STRING),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: Some(name.into()),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

/// A float initializer as raw little-endian bytes.
fn f32_raw(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn i64_typed(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: d.is_none().then(|| "N".to_string()),
                            denotation: None,
                        })
                        .collect(),
                }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// A model with input `x` of shape `[N, dims...]` and the given output names.
fn model(
    opset: i64,
    dims: &[i64],
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    outputs: &[&str],
) -> ModelProto {
    let mut d = vec![None];
    d.extend(dims.iter().map(|&v| Some(v)));
    ModelProto {
        ir_version: Some(7),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![value("x", &d)],
            output: outputs.iter().map(|o| value(o, &[])).collect(),
            ..Default::default()
        }),
        metadata_props: vec![StringStringEntryProto {
            key: Some("preprocess.scale".into()),
            value: Some("0.5".into()),
        }],
        ..Default::default()
    }
}

fn parse(m: &ModelProto) -> Result<Graph, ImportError> {
    parse_onnx(&m.encode_to_vec())
}

/// A 3x3 conv from 3 to 4 channels with bias, then Relu.
fn conv_model(conv_attrs: Vec<AttributeProto>, w_dims: &[i64], w_len: usize) -> ModelProto {
    let w: Vec<f32> = (0..w_len).map(|i| i as f32 * 0.01).collect();
    model(
        13,
        &[3, 8, 8],
        vec![
            node("Conv", "conv", &["x", "w", "b"], "c", conv_attrs),
            node("Relu", "", &["c"], "y", vec![]),
        ],
        vec![
            f32_raw("w", w_dims, &w),
            f32_raw("b", &[4], &[0.1, 0.2, 0.3, 0.4]),
        ],
        &["y"],
    )
}

fn only_node(g: &Graph, kind: &str) -> Op {
    g.nodes
        .iter()
        .find(|n| n.op.kind() == kind)
        .unwrap_or_else(|| panic!("no {kind} node"))
        .op
        .clone()
}

#[test]
fn conv_attributes_and_auto_pad() {
    let g = parse(&conv_model(
        vec![attr_is("pads", &[1, 0, 2, 1]), attr_is("strides", &[2, 1])],
        &[4, 3, 3, 3],
        108,
    ))
    .unwrap();
    let Op::Conv(c) = only_node(&g, "Conv") else {
        unreachable!()
    };
    assert_eq!(
        (c.pads, c.stride, c.kernel, c.groups),
        ([1, 0, 2, 1], [2, 1], [3, 3], 1)
    );
    assert_eq!(c.bias.as_ref().unwrap().data, vec![0.1, 0.2, 0.3, 0.4]);
    assert_eq!(g.metadata["preprocess.scale"], "0.5");
    // Unnamed node gets {op_type}_{index}.
    assert_eq!(g.nodes[1].name, "Relu_1");
    // Input 8x8, k=3, s=2: SAME -> out 4, total pad = 3*2+3-8 = 1.
    for (mode, pads) in [
        ("SAME_UPPER", [0, 1, 1, 1]),
        ("SAME_LOWER", [1, 1, 0, 1]),
        ("VALID", [0, 0, 0, 0]),
        ("NOTSET", [0, 0, 0, 0]),
    ] {
        let g = parse(&conv_model(
            vec![
                attr_s("auto_pad", mode),
                attr_is("strides", &[2, 1]),
                attr_is("kernel_shape", &[3, 3]),
            ],
            &[4, 3, 3, 3],
            108,
        ))
        .unwrap();
        let Op::Conv(c) = only_node(&g, "Conv") else {
            unreachable!()
        };
        assert_eq!(c.pads, pads, "{mode}");
        let s = g.infer_shapes(1).unwrap();
        if mode.starts_with("SAME") {
            assert_eq!(s["y"], vec![1, 4, 4, 8]);
        }
    }
    // Dilation and groups: depthwise 3x3, dilation 2, no bias.
    let m = model(
        13,
        &[3, 9, 9],
        vec![node(
            "Conv",
            "dw",
            &["x", "w"],
            "y",
            vec![
                attr_i("group", 3),
                attr_is("dilations", &[2, 2]),
                attr_s("auto_pad", "SAME_UPPER"),
            ],
        )],
        vec![f32_raw("w", &[3, 1, 3, 3], &[0.5; 27])],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let Op::Conv(c) = only_node(&g, "Conv") else {
        unreachable!()
    };
    assert_eq!((c.groups, c.dilation, c.pads), (3, [2, 2], [2, 2, 2, 2]));
    assert!(c.bias.is_none());
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 3, 9, 9]);
    // A 4-value bias for 12 output channels fails the shape check.
    let e = parse(&conv_model(vec![attr_i("group", 3)], &[12, 1, 3, 3], 108)).unwrap_err();
    assert!(
        matches!(e, ImportError::Graph(GraphError::Shape { .. })),
        "{e}"
    );
}

#[test]
fn conv_unsupported_attribute_value() {
    let e = parse(&conv_model(
        vec![attr_s("auto_pad", "SAME_MIDDLE")],
        &[4, 3, 3, 3],
        108,
    ))
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ImportError::UnsupportedAttribute { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("conv") && msg.contains("auto_pad") && msg.contains("SAME_MIDDLE"),
        "{msg}"
    );
    let e = parse(&conv_model(
        vec![attr_is("kernel_shape", &[5, 5])],
        &[4, 3, 3, 3],
        108,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("kernel_shape"), "{e}");
    let e = parse(&conv_model(
        vec![attr_is("pads", &[1, 1, -1, 1])],
        &[4, 3, 3, 3],
        108,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("pads"), "{e}");
    let e = parse(&conv_model(vec![], &[4, 3, 0, 0], 0)).unwrap_err();
    assert!(e.to_string().contains("[4, 3, 0, 0]"), "{e}");
    let e = parse(&conv_model(vec![attr_i("group", 0)], &[4, 3, 3, 3], 108)).unwrap_err();
    assert!(e.to_string().contains("group"), "{e}");
    let e = parse(&conv_model(
        vec![attr_i("frobnicate", 1)],
        &[4, 3, 3, 3],
        108,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("frobnicate"), "{e}");
}

#[test]
fn tensor_dims_disagree_with_data() {
    let e = parse(&conv_model(vec![], &[4, 3, 3, 3], 107)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImportError::BadTensor { .. }), "{msg}");
    assert!(msg.contains("'w'") && msg.contains("108"), "{msg}");
    // Typed fields too.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    let g = m.graph.as_mut().unwrap();
    g.initializer[1] = TensorProto {
        dims: vec![4],
        data_type: Some(data_type::FLOAT),
        name: Some("b".into()),
        float_data: vec![1.0, 2.0, 3.0],
        ..Default::default()
    };
    assert!(matches!(parse(&m), Err(ImportError::BadTensor { .. })));
    // A raw_data length that is not a whole number of elements.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    m.graph.as_mut().unwrap().initializer[1]
        .raw_data
        .as_mut()
        .unwrap()
        .push(0);
    assert!(matches!(parse(&m), Err(ImportError::BadTensor { .. })));
}

#[test]
fn absurd_and_negative_dims() {
    for dims in [
        vec![1i64 << 20, 1 << 20, 1, 1],
        vec![i64::MAX, i64::MAX, 2, 2],
        vec![4, 3, -3, -3],
    ] {
        let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
        m.graph.as_mut().unwrap().initializer[0].dims = dims.clone();
        let e = parse(&m).unwrap_err();
        assert!(matches!(e, ImportError::BadTensor { .. }), "{dims:?}: {e}");
        assert!(e.to_string().contains("'w'"), "{e}");
    }
    // The graph input too.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    let inp = &mut m.graph.as_mut().unwrap().input[0];
    let dims = &mut inp
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap()
        .dim;
    dims[2].dim_value = Some(1 << 40);
    assert!(matches!(parse(&m), Err(ImportError::Input(_))));
}

#[test]
fn unknown_op_names_op_and_node() {
    let m = model(
        13,
        &[3, 4, 4],
        vec![node("FrobnicateV2", "my_node", &["x"], "y", vec![])],
        vec![],
        &["y"],
    );
    let e = parse(&m).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImportError::UnsupportedOp { .. }));
    assert!(
        msg.contains("FrobnicateV2") && msg.contains("my_node"),
        "{msg}"
    );
    // A custom domain is refused even for a known op name.
    let mut n = node("Relu", "r", &["x"], "y", vec![]);
    n.domain = Some("com.example".into());
    let e = parse(&model(13, &[3, 4, 4], vec![n], vec![], &["y"])).unwrap_err();
    assert!(e.to_string().contains("com.example.Relu"), "{e}");
    // Opsets outside 1..=21.
    for v in [0, 22] {
        let m = model(
            v,
            &[3, 4, 4],
            vec![node("Relu", "r", &["x"], "y", vec![])],
            vec![],
            &["y"],
        );
        assert!(matches!(parse(&m), Err(ImportError::Opset(x)) if x == v));
    }
}

/// One load names every unsupported operator and attribute, in node order, also those
/// after the first and those reading its output (operators cnnpack lacks, a Conv with an
/// unsupported attribute value), while supported nodes
/// between them are not reported.
#[test]
fn every_unsupported_op_in_one_error() {
    let w: Vec<f32> = (0..4 * 3 * 9).map(|i| i as f32 * 0.01).collect();
    let m = model(
        13,
        &[3, 8, 8],
        vec![
            node("Conv", "conv", &["x", "w"], "c", vec![]),
            node("Einsum", "einsum", &["c"], "h", vec![]),
            node("Relu", "relu_after", &["h"], "r", vec![]),
            node(
                "Conv",
                "conv2",
                &["r", "w2"],
                "c2",
                vec![attr_s("auto_pad", "BOGUS")],
            ),
            node("TopK", "topk", &["c2"], "m", vec![]),
            node("Relu", "relu_ok", &["x"], "y2", vec![]),
            node("Hardmax", "hardmax", &["y2"], "y3", vec![]),
        ],
        vec![
            f32_raw("w", &[4, 3, 3, 3], &w),
            f32_raw("w2", &[4, 4, 3, 3], &[0.0; 144]),
        ],
        &["m", "y3"],
    );
    let e = parse(&m).unwrap_err();
    let ImportError::Unsupported(list) = &e else {
        panic!("one error listing all: {e}");
    };
    let names: Vec<String> = list.iter().map(|e| e.to_string()).collect();
    assert_eq!(list.len(), 4, "{names:#?}");
    for (entry, (node, what)) in names.iter().zip([
        ("einsum", "Einsum"),
        ("conv2", "auto_pad"),
        ("topk", "TopK"),
        ("hardmax", "Hardmax"),
    ]) {
        assert!(entry.contains(node) && entry.contains(what), "{entry}");
    }
    let msg = e.to_string();
    assert!(
        msg.contains("(4 errors)") && !msg.contains("relu_"),
        "{msg}"
    );
}

#[test]
fn cycle_and_dangling_input() {
    let m = model(
        13,
        &[3, 4, 4],
        vec![
            node("Add", "a", &["x", "q"], "p", vec![]),
            node("Relu", "b", &["p"], "q", vec![]),
        ],
        vec![],
        &["q"],
    );
    let e = parse(&m).unwrap_err();
    assert!(matches!(e, ImportError::Graph(GraphError::Cycle(_))), "{e}");
    let m = model(
        13,
        &[3, 4, 4],
        vec![node("Relu", "r", &["nowhere"], "y", vec![])],
        vec![],
        &["y"],
    );
    let e = parse(&m).unwrap_err();
    assert!(
        matches!(e, ImportError::Graph(GraphError::DanglingInput { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("nowhere"));
    // Output nobody produces.
    let m = model(
        13,
        &[3, 4, 4],
        vec![node("Relu", "r", &["x"], "y", vec![])],
        vec![],
        &["z"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::Graph(GraphError::MissingOutput(_)))
    ));
}

#[test]
fn graph_inputs_rules() {
    // Initializer listed as an input (IR 3 style) is a constant; a second real input is an error.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    let g = m.graph.as_mut().unwrap();
    g.input
        .push(value("w", &[Some(4), Some(3), Some(3), Some(3)]));
    assert!(parse(&m).is_ok());
    m.graph
        .as_mut()
        .unwrap()
        .input
        .push(value("x2", &[None, Some(3)]));
    assert!(matches!(parse(&m), Err(ImportError::Input(_))));
    // A symbolic non-batch dim is refused; a fixed batch is recorded.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    m.graph.as_mut().unwrap().input[0] = value("x", &[Some(2), Some(3), None, Some(8)]);
    assert!(matches!(parse(&m), Err(ImportError::Input(_))));
    m.graph.as_mut().unwrap().input[0] = value("x", &[Some(2), Some(3), Some(8), Some(8)]);
    assert_eq!(parse(&m).unwrap().input.declared_batch, Some(2));
}

#[test]
fn gemm_and_matmul() {
    // Gemm transB=0: B is [in, out]; alpha scales W, beta scales C.
    let b: Vec<f32> = (0..6).map(|v| v as f32).collect(); // [3, 2]
    let m = model(
        13,
        &[3],
        vec![node(
            "Gemm",
            "g",
            &["x", "B", "C"],
            "y",
            vec![attr_f("alpha", 2.0), attr_f("beta", 0.5)],
        )],
        vec![
            f32_raw("B", &[3, 2], &b),
            f32_raw("C", &[1, 2], &[4.0, 6.0]),
        ],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let Op::Linear(l) = only_node(&g, "Linear") else {
        unreachable!()
    };
    let w = l.weight.to_dense();
    assert_eq!(w.shape, vec![2, 3]);
    assert_eq!(w.data, vec![0., 4., 8., 2., 6., 10.]);
    assert_eq!(l.bias.unwrap().data, vec![2.0, 3.0]);
    // transA is refused.
    let m = model(
        13,
        &[3],
        vec![node(
            "Gemm",
            "g",
            &["x", "B"],
            "y",
            vec![attr_i("transA", 1)],
        )],
        vec![f32_raw("B", &[3, 2], &b)],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::UnsupportedAttribute { .. })
    ));
    // MatMul with a constant weight transposes it; double initializers are cast.
    let m = model(
        13,
        &[3],
        vec![node("MatMul", "mm", &["x", "B"], "y", vec![])],
        vec![TensorProto {
            dims: vec![3, 2],
            data_type: Some(data_type::DOUBLE),
            name: Some("B".into()),
            double_data: b.iter().map(|&v| v as f64).collect(),
            ..Default::default()
        }],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let Op::Linear(l) = only_node(&g, "Linear") else {
        unreachable!()
    };
    assert_eq!(l.weight.to_dense().data, vec![0., 2., 4., 1., 3., 5.]);
    assert!(l.bias.is_none());
    // A weight behind an Identity is still a constant.
    let m = model(
        13,
        &[3],
        vec![
            node("Identity", "i", &["B"], "B2", vec![]),
            node("Gemm", "g", &["x", "B2"], "y", vec![]),
        ],
        vec![f32_raw("B", &[3, 2], &b)],
        &["y"],
    );
    assert_eq!(parse(&m).unwrap().nodes.len(), 1);
    // MatMul of two computed values is refused.
    let m = model(
        13,
        &[3],
        vec![
            node("Relu", "r", &["x"], "r", vec![]),
            node("MatMul", "mm", &["x", "r"], "y", vec![]),
        ],
        vec![],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::MissingConstant { .. })
    ));
}

#[test]
fn elementwise_and_constants() {
    let c = f32_raw("c", &[3, 1, 1], &[1.0, 2.0, 3.0]);
    let m = model(
        13,
        &[3, 4, 4],
        vec![
            node("Sub", "s", &["c", "x"], "a", vec![]),
            node("Div", "d", &["a", "k"], "b", vec![]),
            node(
                "Constant",
                "kc",
                &[],
                "k",
                vec![AttributeProto {
                    name: Some("value".into()),
                    r#type: Some(attr_type::TENSOR),
                    t: Some(f32_raw("", &[], &[4.0])),
                    ..Default::default()
                }],
            ),
            node("Mul", "m", &["b", "b"], "m", vec![]),
        ],
        vec![c],
        &["b"],
    );
    // Mul of two computed values is unsupported, and the Constant comes after its use.
    assert!(parse(&m).is_err());
    let m = model(
        13,
        &[3, 4, 4],
        vec![
            node("Constant", "kc", &[], "k", vec![attr_f("value_float", 4.0)]),
            node("Sub", "s", &["c", "x"], "a", vec![]),
            node("Div", "d", &["a", "k"], "b", vec![]),
            node("Relu", "r", &["x"], "r", vec![]),
            node("Add", "add", &["b", "r"], "y", vec![]),
        ],
        vec![f32_raw("c", &[3, 1, 1], &[1.0, 2.0, 3.0])],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let kinds: Vec<_> = g.nodes.iter().map(|n| n.op.clone()).collect();
    assert!(kinds.iter().any(|o| matches!(o, Op::ConstBinary { kind: BinaryKind::Sub, constant_first: true, constant, .. } if constant.shape == vec![3, 1, 1])));
    assert!(kinds.iter().any(|o| matches!(o, Op::ConstBinary { kind: BinaryKind::Div, constant_first: false, constant, .. } if constant.data == vec![4.0])));
    assert!(kinds.contains(&Op::Add));
}

#[test]
fn clip_across_opsets() {
    let m = model(
        9,
        &[3],
        vec![node(
            "Clip",
            "c",
            &["x"],
            "y",
            vec![attr_f("min", 0.0), attr_f("max", 6.0)],
        )],
        vec![],
        &["y"],
    );
    assert_eq!(
        only_node(&parse(&m).unwrap(), "Clip"),
        Op::Clip { min: 0.0, max: 6.0 }
    );
    let m = model(
        13,
        &[3],
        vec![node("Clip", "c", &["x", "", "hi"], "y", vec![])],
        vec![f32_raw("hi", &[], &[6.0])],
        &["y"],
    );
    assert_eq!(
        only_node(&parse(&m).unwrap(), "Clip"),
        Op::Clip {
            min: f32::NEG_INFINITY,
            max: 6.0
        }
    );
    // Attributes are not allowed from opset 11.
    let m = model(
        13,
        &[3],
        vec![node("Clip", "c", &["x"], "y", vec![attr_f("min", 0.0)])],
        vec![],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::UnsupportedAttribute { .. })
    ));
}

#[test]
fn softmax_axis_rules() {
    let sm = |opset, dims: &[i64], axis: Option<i64>| {
        let attrs = axis.map(|a| vec![attr_i("axis", a)]).unwrap_or_default();
        parse(&model(
            opset,
            dims,
            vec![node("Softmax", "s", &["x"], "y", attrs)],
            vec![],
            &["y"],
        ))
    };
    assert!(sm(13, &[10], None).is_ok());
    assert!(sm(13, &[3, 10], Some(-1)).is_ok());
    assert!(sm(13, &[3, 10], Some(2)).is_ok());
    assert!(
        sm(11, &[10], None).is_ok(),
        "old default axis=1 on 2-D input"
    );
    // Another axis is brought to the end and back: by a flattening Reshape before
    // opset 13 (which coerces to 2-D), by a Transpose after.
    let kinds = |g: &Graph| g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>();
    let g = sm(11, &[3, 10], None).expect("old default axis=1 on 3-D input flattens");
    assert_eq!(kinds(&g), ["Reshape", "Softmax", "Reshape"]);
    let g = sm(13, &[3, 10], Some(1)).unwrap();
    assert_eq!(kinds(&g), ["Transpose", "Softmax", "Transpose"]);
    // Never over the batch axis.
    assert!(matches!(
        sm(13, &[3, 10], Some(0)),
        Err(ImportError::UnsupportedAttribute { .. })
    ));
}

#[test]
fn reshape_forms() {
    let rs = |opset, shape: &[i64], batch: Option<i64>| {
        let mut m = model(
            opset,
            &[2, 3, 4],
            vec![node("Reshape", "r", &["x", "s"], "y", vec![])],
            vec![i64_typed("s", shape)],
            &["y"],
        );
        m.graph.as_mut().unwrap().input[0] = value("x", &[batch, Some(2), Some(3), Some(4)]);
        parse(&m)
    };
    for (shape, batch) in [
        (vec![0, -1], None),
        (vec![-1, 24], None),
        (vec![1, 24], Some(1)),
        (vec![2, 24], Some(2)),
        (vec![1, -1], Some(1)),
    ] {
        let g = rs(13, &shape, batch).unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert_eq!(only_node(&g, "Flatten"), Op::Flatten { axis: 1 });
    }
    // Any other target that keeps the batch on axis 0 is a Reshape (moves no data).
    for (shape, target, at3) in [
        (vec![0, 6, 4], vec![0, 6, 4], vec![3, 6, 4]),
        (vec![-1, 12], vec![-1, 12], vec![6, 12]),
        (vec![0, 4, -1], vec![0, 4, -1], vec![3, 4, 6]),
    ] {
        let g = rs(13, &shape, None).unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert_eq!(only_node(&g, "Reshape"), Op::Reshape { target });
        assert_eq!(g.infer_shapes(3).unwrap()["y"], at3);
    }
    // A literal batch that is not the file's, or a reshape that moves the batch.
    for (shape, batch) in [
        (vec![1, 24], None),
        (vec![2, 24], Some(1)),
        (vec![2, -1], None),
    ] {
        let e = rs(13, &shape, batch).unwrap_err();
        assert!(
            matches!(e, ImportError::UnsupportedAttribute { .. }),
            "{shape:?}: {e}"
        );
    }
    // A Reshape of a constant is folded (mnist-8 style weight reshape before MatMul).
    let m = model(
        13,
        &[6],
        vec![
            node("Reshape", "rw", &["w", "s"], "w2", vec![]),
            node("MatMul", "mm", &["x", "w2"], "y", vec![]),
        ],
        vec![
            f32_raw("w", &[2, 3, 2], &[0.0; 12]),
            i64_typed("s", &[6, 2]),
        ],
        &["y"],
    );
    let g = parse(&m).unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 2]);
}

#[test]
fn pad_and_slice_across_opsets() {
    // Pad as attributes (opset 10) and as inputs (opset 13).
    let m = model(
        10,
        &[2, 3, 3],
        vec![node(
            "Pad",
            "p",
            &["x"],
            "y",
            vec![
                attr_is("pads", &[0, 1, 0, 2, 0, 0, 1, 0]),
                attr_f("value", 1.5),
            ],
        )],
        vec![],
        &["y"],
    );
    let g = parse(&m).unwrap();
    assert_eq!(
        only_node(&g, "Pad"),
        Op::Pad {
            pads: vec![0, 1, 0, 2, 0, 0, 1, 0],
            value: 1.5,
            mode: PadMode::Constant,
        }
    );
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 3, 4, 5]);
    let m = model(
        13,
        &[2, 3, 3],
        vec![node("Pad", "p", &["x", "p", "v"], "y", vec![])],
        vec![
            i64_typed("p", &[0, 1, 0, 2, 0, 0, 1, 0]),
            f32_raw("v", &[], &[-1.0]),
        ],
        &["y"],
    );
    assert_eq!(
        only_node(&parse(&m).unwrap(), "Pad"),
        Op::Pad {
            pads: vec![0, 1, 0, 2, 0, 0, 1, 0],
            value: -1.0,
            mode: PadMode::Constant,
        }
    );
    let m = model(
        13,
        &[2, 3, 3],
        vec![node(
            "Pad",
            "p",
            &["x", "p"],
            "y",
            vec![attr_s("mode", "reflect")],
        )],
        vec![i64_typed("p", &[0; 8])],
        &["y"],
    );
    assert!(matches!(
        only_node(&parse(&m).unwrap(), "Pad"),
        Op::Pad {
            mode: PadMode::Reflect,
            ..
        }
    ));
    let m = model(
        13,
        &[2, 3, 3],
        vec![node(
            "Pad",
            "p",
            &["x", "p"],
            "y",
            vec![attr_s("mode", "wrap")],
        )],
        vec![i64_typed("p", &[0; 8])],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::UnsupportedAttribute { .. })
    ));

    // Slice from opset 10: negative starts and INT64_MAX ends normalised to the shape.
    let m = model(
        13,
        &[4, 10, 7],
        vec![node(
            "Slice",
            "s",
            &["x", "st", "en", "ax", "sp"],
            "y",
            vec![],
        )],
        vec![
            i64_typed("st", &[-8, 1, 0]),
            i64_typed("en", &[i64::MAX, -1, i64::MAX]),
            i64_typed("ax", &[2, 3, 0]),
            i64_typed("sp", &[3, 2, 1]),
        ],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let Op::Slice {
        starts,
        ends,
        steps,
    } = only_node(&g, "Slice")
    else {
        unreachable!()
    };
    assert_eq!(starts, vec![0, 0, 2, 1]);
    assert_eq!(&ends[1..], &[4, 10, 6]);
    assert_eq!(steps, vec![1, 1, 3, 2]);
    assert_eq!(g.infer_shapes(5).unwrap()["y"], vec![5, 4, 3, 3]);
    // Slice as attributes (opset 9), default axes.
    let m = model(
        9,
        &[4, 10],
        vec![node(
            "Slice",
            "s",
            &["x"],
            "y",
            vec![
                attr_is("starts", &[0, 1, 2]),
                attr_is("ends", &[1 << 40, 3, -2]),
            ],
        )],
        vec![],
        &["y"],
    );
    let g = parse(&m).unwrap();
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 2, 6]);
    // Slicing part of the batch axis is refused; so is a negative step.
    let m = model(
        13,
        &[4],
        vec![node("Slice", "s", &["x", "st", "en"], "y", vec![])],
        vec![i64_typed("st", &[0]), i64_typed("en", &[1])],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::UnsupportedAttribute { .. })
    ));
    let m = model(
        13,
        &[4],
        vec![node(
            "Slice",
            "s",
            &["x", "st", "en", "ax", "sp"],
            "y",
            vec![],
        )],
        vec![
            i64_typed("st", &[3]),
            i64_typed("en", &[0]),
            i64_typed("ax", &[1]),
            i64_typed("sp", &[-1]),
        ],
        &["y"],
    );
    // A negative step runs from 3 down to 1 (ONNX's end 0 excluded, the IR's end 1
    // included).
    let g = parse(&m).unwrap();
    assert_eq!(
        only_node(&g, "Slice"),
        Op::Slice {
            starts: vec![0, 3],
            ends: vec![i32::MAX as usize, 1],
            steps: vec![1, -1],
        }
    );
    assert_eq!(g.infer_shapes(2).unwrap()["y"], vec![2, 3]);
    // Slice bounds that are not constants.
    let m = model(
        13,
        &[4],
        vec![node("Slice", "s", &["x", "x", "x"], "y", vec![])],
        vec![],
        &["y"],
    );
    assert!(matches!(
        parse(&m),
        Err(ImportError::MissingConstant { .. })
    ));
}

#[test]
fn misc_ops() {
    let m = model(
        13,
        &[4, 6, 6],
        vec![
            node(
                "Transpose",
                "t",
                &["x"],
                "t",
                vec![attr_is("perm", &[0, 1, 2, 3])],
            ),
            node("Dropout", "d", &["t"], "d", vec![]),
            node("LeakyRelu", "l", &["d"], "l", vec![attr_f("alpha", 0.2)]),
            node("Sigmoid", "s", &["l"], "s", vec![]),
            node("LRN", "n", &["s"], "n", vec![attr_i("size", 3)]),
            node(
                "AveragePool",
                "ap",
                &["n"],
                "ap",
                vec![
                    attr_is("kernel_shape", &[3, 3]),
                    attr_is("strides", &[2, 2]),
                    attr_is("pads", &[1, 1, 1, 1]),
                    attr_i("count_include_pad", 1),
                    attr_i("ceil_mode", 1),
                ],
            ),
            node("Concat", "c", &["ap", "ap"], "c", vec![attr_i("axis", -3)]),
            node("GlobalAveragePool", "g", &["c"], "g", vec![]),
            node("Flatten", "f", &["g"], "f", vec![attr_i("axis", -3)]),
            node("Identity", "i", &["f"], "y", vec![]),
        ],
        vec![],
        &["y"],
    );
    let g = parse(&m).unwrap();
    assert_eq!(only_node(&g, "Concat"), Op::Concat { axis: 1 });
    assert_eq!(only_node(&g, "Flatten"), Op::Flatten { axis: 1 });
    assert_eq!(only_node(&g, "LeakyRelu"), Op::LeakyRelu { alpha: 0.2 });
    assert_eq!(
        only_node(&g, "LRN"),
        Op::Lrn {
            size: 3,
            alpha: 1e-4,
            beta: 0.75,
            bias: 1.0
        }
    );
    let Op::AvgPool(p) = only_node(&g, "AveragePool") else {
        unreachable!()
    };
    assert!(p.count_include_pad && p.ceil_mode);
    assert_eq!(g.infer_shapes(2).unwrap()["y"], vec![2, 8]);
    // A Transpose that keeps the batch first is an op; one that moves it is refused; a
    // used MaxPool Indices output too.
    let transpose = |perm: &[i64]| {
        parse(&model(
            13,
            &[4, 6, 6],
            vec![node(
                "Transpose",
                "t",
                &["x"],
                "y",
                vec![attr_is("perm", perm)],
            )],
            vec![],
            &["y"],
        ))
    };
    let g = transpose(&[0, 2, 1, 3]).unwrap();
    assert_eq!(
        only_node(&g, "Transpose"),
        Op::Transpose {
            perm: vec![0, 2, 1, 3]
        }
    );
    assert_eq!(g.infer_shapes(2).unwrap()["y"], vec![2, 6, 4, 6]);
    assert!(matches!(
        transpose(&[1, 0, 2, 3]),
        Err(ImportError::UnsupportedAttribute { .. })
    ));
    let mut mp = node(
        "MaxPool",
        "mp",
        &["x"],
        "y",
        vec![attr_is("kernel_shape", &[2, 2])],
    );
    mp.output.push("idx".into());
    let m = model(13, &[4, 6, 6], vec![mp.clone()], vec![], &["y", "idx"]);
    let e = parse(&m).unwrap_err();
    assert!(e.to_string().contains("idx"), "{e}");
    // The same Indices output, unused, is fine.
    let m = model(13, &[4, 6, 6], vec![mp], vec![], &["y"]);
    assert!(parse(&m).is_ok());
}

#[test]
fn batchnorm_and_int32_initializers() {
    let c = |n: &str, v: f32| f32_raw(n, &[2], &[v, v]);
    let m = model(
        13,
        &[2, 3, 3],
        vec![node(
            "BatchNormalization",
            "bn",
            &["x", "s", "b", "m", "v"],
            "y",
            vec![attr_f("epsilon", 1e-3)],
        )],
        vec![c("s", 2.0), c("b", 0.5), c("m", 0.1), c("v", 4.0)],
        &["y"],
    );
    let Op::BatchNorm {
        scale,
        var,
        epsilon,
        ..
    } = only_node(&parse(&m).unwrap(), "BatchNormalization")
    else {
        unreachable!()
    };
    assert_eq!(
        (scale.data, var.data, epsilon),
        (vec![2.0, 2.0], vec![4.0, 4.0], 1e-3)
    );
    // int32 pads, typed field.
    let m = model(
        13,
        &[2, 3, 3],
        vec![node("Pad", "p", &["x", "p"], "y", vec![])],
        vec![TensorProto {
            dims: vec![8],
            data_type: Some(data_type::INT32),
            name: Some("p".into()),
            int32_data: vec![0, 0, 1, 1, 0, 0, 1, 1],
            ..Default::default()
        }],
        &["y"],
    );
    assert_eq!(
        parse(&m).unwrap().infer_shapes(1).unwrap()["y"],
        vec![1, 2, 5, 5]
    );
    // An unsupported dtype names the tensor.
    let mut m = conv_model(vec![], &[4, 3, 3, 3], 108);
    m.graph.as_mut().unwrap().initializer[1].data_type = Some(10);
    let e = parse(&m).unwrap_err();
    assert!(
        e.to_string().contains("'b'") && e.to_string().contains("10"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Malformed files.

/// Runs the parser, turning a panic into a test failure that names the case.
fn parse_no_panic(bytes: &[u8], what: &str) -> Result<Graph, ImportError> {
    std::panic::catch_unwind(|| parse_onnx(bytes))
        .unwrap_or_else(|_| panic!("parse_onnx panicked on {what}"))
}

#[test]
fn truncated_files_fail() {
    let Some(d) = data_dir() else { return };
    for f in [
        "lenet/lenet5_original.onnx",
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
    ] {
        let bytes = std::fs::read(d.join(f)).unwrap();
        assert!(parse_onnx(&bytes).is_ok());
        for k in 0..50 {
            let cut = bytes.len() * k / 50;
            let r = parse_no_panic(&bytes[..cut], &format!("{f} cut at {cut}"));
            assert!(r.is_err(), "{f} truncated to {cut} bytes parsed");
        }
        // Also cuts near the end, inside the last fields.
        for cut in [bytes.len() - 1, bytes.len() - 7, bytes.len() - 100] {
            let _ = parse_no_panic(&bytes[..cut], &format!("{f} cut at {cut}"));
        }
    }
    assert!(load_onnx(std::path::Path::new("/nonexistent/model.onnx")).is_err());
}

#[test]
fn random_byte_flips_never_panic() {
    let mut rng = cnnpack::graph::Rng::new(2024);
    let mut errors = 0;
    let mut trials = 0;
    // A structure-dense exported model (every op kind) needs no test data.
    let mut files = vec![(
        "zoo-like export".to_string(),
        export_onnx(&zoo_like()).unwrap(),
    )];
    if let Some(d) = data_dir() {
        for f in ["onnx-zoo/mnist-8.onnx", "cifar/resnet20.onnx"] {
            files.push((f.to_string(), std::fs::read(d.join(f)).unwrap()));
        }
    }
    for (f, bytes) in &files {
        assert!(parse_onnx(bytes).is_ok(), "{f} parses before corruption");
        // CNNPACK_FLIP_TRIALS raises the count for a longer local fuzz run.
        let n: usize = std::env::var("CNNPACK_FLIP_TRIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        for trial in 0..n {
            let mut b = bytes.clone();
            let flips = rng.range(1, 4);
            for _ in 0..flips {
                // Half the flips hit the first 2 KiB, where the structure is dense.
                let limit = if rng.range(0, 1) == 0 {
                    b.len().min(2048)
                } else {
                    b.len()
                };
                let i = rng.range(0, limit - 1);
                b[i] ^= 1 << rng.range(0, 7);
            }
            trials += 1;
            match parse_no_panic(&b, &format!("{f} trial {trial}")) {
                Ok(g) => {
                    // Whatever parses must be a consistent graph.
                    g.infer_shapes(2).expect("an imported graph has shapes");
                    // ... and survives an export round trip unchanged.
                    let back = parse_onnx(&export_onnx(&g).expect("export"))
                        .unwrap_or_else(|e| panic!("{f} trial {trial}: re-import: {e}"));
                    let mut want = g.clone();
                    want.input.declared_batch = None;
                    assert_same_graph(&back, &want, &format!("{f} trial {trial}"));
                }
                Err(_) => errors += 1,
            }
        }
    }
    println!("{errors} of {trials} corrupted files rejected");
    assert!(errors > 0);
}

#[test]
fn garbage_is_an_error() {
    assert!(parse_onnx(&[]).is_err(), "empty file has no graph");
    assert!(parse_onnx(&[0xff; 64]).is_err());
    // A length prefix claiming 2 GB.
    assert!(matches!(
        parse_onnx(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x07, 1, 2]),
        Err(ImportError::Decode(_))
    ));
}

// ---------------------------------------------------------------------------
// Export round trips.

fn zoo_like() -> Graph {
    let mut b = GraphBuilder::new("image", &[3, 17, 15], 11);
    b.metadata("preprocess.mean", "1,2,3");
    let x = b.input();
    let c1 = b.conv(&x, 8, 3, 2, 1, 1);
    let c1 = b.batch_norm(&c1);
    let c1 = b.relu(&c1);
    let dw = b.conv(&c1, 8, 3, 1, 1, 8);
    let s = b.add(&c1, &dw);
    let l = b.lrn(&s, 5);
    let p = b.max_pool_ceil(&l, 3, 2);
    let a = b.avg_pool(&p, 3, 1, 1);
    let cat = b.concat(&[&p, &a]);
    let sl = b.push(
        "slice",
        Op::Slice {
            starts: vec![0, 0, 1, 0],
            ends: vec![i32::MAX as usize, 16, 4, 4],
            steps: vec![1, 1, 2, 3],
        },
        &[&cat],
    );
    let pd = b.push(
        "pad",
        Op::Pad {
            pads: vec![0, 2, 0, 1, 0, 2, 1, 0],
            value: 0.5,
            mode: PadMode::Constant,
        },
        &[&sl],
    );
    let cb = b.push(
        "sub",
        Op::ConstBinary {
            kind: BinaryKind::Sub,
            constant: Tensor::full(vec![20, 1, 1], 0.25),
            constant_first: true,
        },
        &[&pd],
    );
    let lr = b.push("lrelu", Op::LeakyRelu { alpha: 0.1 }, &[&cb]);
    let cl = b.push("clip", Op::Clip { min: 0.0, max: 6.0 }, &[&lr]);
    let cl2 = b.push(
        "clip_hi",
        Op::Clip {
            min: f32::NEG_INFINITY,
            max: 3.0,
        },
        &[&cl],
    );
    let sg = b.push("sig", Op::Sigmoid, &[&cl2]);
    let g = b.global_avg_pool(&sg);
    let f = b.flatten(&g);
    let id = b.push("id", Op::Identity, &[&f]);
    let fc = b.linear(&id, 7);
    let sm = b.softmax(&fc);
    b.finish(&[&sm]).expect("zoo-like graph is valid")
}

#[test]
fn export_round_trip_builder_graph() {
    let g = zoo_like();
    let bytes = export_onnx(&g).unwrap();
    let back = parse_onnx(&bytes).unwrap_or_else(|e| panic!("re-import: {e}"));
    assert_same_graph(&back, &g, "zoo-like");
    for batch in [1, 3] {
        assert_eq!(
            back.infer_shapes(batch).unwrap(),
            g.infer_shapes(batch).unwrap()
        );
    }
    // The file declares opset 17, IR 8, a symbolic batch and raw_data initializers.
    let m = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.opset_import[0].version, Some(17));
    let gp = m.graph.unwrap();
    assert_eq!(
        gp.input[0]
            .r#type
            .as_ref()
            .unwrap()
            .tensor_type
            .as_ref()
            .unwrap()
            .shape
            .as_ref()
            .unwrap()
            .dim[0]
            .dim_param
            .as_deref(),
        Some("N")
    );
    assert!(gp.initializer.iter().all(|t| t.raw_data.is_some()));
}

#[test]
fn export_round_trip_real_models() {
    let Some(d) = data_dir() else { return };
    for f in [
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
        "cifar/resnet20.onnx",
        "onnx-zoo/mnist-8.onnx",
        "lenet/lenet5_sparse.onnx",
    ] {
        let g = load_onnx(&d.join(f)).unwrap();
        let back = parse_onnx(&export_onnx(&g).unwrap()).unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut want = g.clone();
        // The export writes a symbolic batch.
        want.input.declared_batch = None;
        assert_same_graph(&back, &want, f);
    }
}

#[test]
fn size_explosions_are_errors() {
    // Each Concat doubles the channels: 2^20 elements per item reach 2^31 after 11.
    let mut nodes = vec![node("Relu", "r", &["x"], "v0", vec![])];
    for i in 0..40 {
        let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
        nodes.push(node(
            "Concat",
            &format!("c{i}"),
            &[&a, &a],
            &b,
            vec![attr_i("axis", 1)],
        ));
    }
    let e = parse(&model(13, &[1, 1024, 1024], nodes, vec![], &["v40"])).unwrap_err();
    assert!(e.to_string().contains("c11"), "{e}");
    // Pads that make one value over 2^31 elements.
    let m = model(
        13,
        &[1, 1, 1],
        vec![node("Pad", "p", &["x", "p"], "y", vec![])],
        vec![i64_typed(
            "p",
            &[0, 0, 1 << 23, 1 << 23, 0, 0, 1 << 23, 1 << 23],
        )],
        &["y"],
    );
    assert!(parse(&m).is_err());
}

#[test]
fn unsorted_nodes_are_sorted() {
    let m = model(
        13,
        &[3, 4, 4],
        vec![
            node("Flatten", "f", &["b"], "y", vec![]),
            node("Relu", "b", &["a"], "b", vec![]),
            node("Sigmoid", "a", &["x"], "a", vec![]),
        ],
        vec![],
        &["y"],
    );
    let g = parse(&m).unwrap();
    let names: Vec<_> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "f"]);
    assert_eq!(g.infer_shapes(2).unwrap()["y"], vec![2, 48]);
}

// ---------------------------------------------------------------------------
// ONNX Runtime golden pairs through the CPU reference.

/// Runs `model` on `golden/input.npy` with the reference backend (as imported,
/// and after `fold`) and compares with onnxruntime's `golden/output.npy`:
/// |ours - ort| <= 1e-4 * |ort| + `abs_floor` per element. The floor covers
/// values near zero, where a relative bound means nothing (probabilities of
/// 1e-9, logits that cross zero); it is 1e-4 of the output's largest magnitude.
fn golden(model: &str, dir: &str) {
    use cnnpack::backend::cpu::reference::run_graph;
    use cnnpack::format::read_npy;
    let Some(d) = data_dir() else { return };
    let g = load_onnx(&d.join(model)).unwrap();
    let input = read_npy(&d.join(dir).join("input.npy")).unwrap();
    let want = read_npy(&d.join(dir).join("output.npy")).unwrap();
    let folded = cnnpack::graph::fold(g.clone()).unwrap();
    let mut runs = vec![("imported", &g)];
    // The reference is slow on SqueezeNet; only rerun when folding changed something.
    if folded != g {
        runs.push(("folded", &folded));
    }
    for (what, graph) in runs {
        let out = run_graph(graph, &input).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(out.len(), 1);
        let got = &out[0];
        assert_eq!(got.shape, want.shape, "{model} {what}");
        let peak = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let floor = 1e-4 * peak;
        let mut worst = 0f32;
        for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
            let err = (a - b).abs();
            let bound = 1e-4 * b.abs() + floor;
            worst = worst.max(err / bound);
            assert!(
                err <= bound,
                "{model} {what}: element {i}: {a} vs onnxruntime {b}"
            );
        }
        println!("{model} {what}: worst error / bound {worst:.3e}");
        // Same class per row.
        let cols = want.shape[1];
        for r in 0..want.shape[0] {
            let am = |t: &Tensor| {
                let row = &t.data[r * cols..(r + 1) * cols];
                (0..cols).fold(0, |best, j| if row[j] > row[best] { j } else { best })
            };
            assert_eq!(am(got), am(&want), "{model} {what} row {r}");
        }
    }
}

#[test]
fn golden_lenet5() {
    golden("lenet/lenet5_original.onnx", "lenet/golden");
}

#[test]
fn golden_squeezenet() {
    golden(
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
        "imagenet/squeezenet1.0/golden",
    );
}

#[test]
fn golden_resnet20() {
    golden("cifar/resnet20.onnx", "cifar/golden");
}

/// Encodes a length-delimited field (wire type 2).
fn ld(field: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut n = body.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

#[test]
fn allocation_bombs_are_refused_before_decoding() {
    // 1,000,001 empty nodes: 2 MB of file, over the node limit.
    let graph: Vec<u8> = [0x0a, 0x00].repeat(1_000_001);
    let e = parse_onnx(&ld(7, &graph)).unwrap_err();
    assert!(e.to_string().contains("1000001 nodes"), "{e}");
    // One node with 4 million empty attributes: 8 MB that prost would turn into
    // more than a gigabyte of structs.
    let node_body: Vec<u8> = [0x2a, 0x00].repeat(4_000_000);
    let e = parse_onnx(&ld(7, &ld(1, &node_body))).unwrap_err();
    assert!(e.to_string().contains("decoding would take"), "{e}");
}

/// A fully static model the batched import refuses (a rank-1 input; a reduction over
/// axis 0) imports without a batch axis: marked `UNBATCHED`, its input read as one item
/// behind the IR's leading 1, every ONNX axis one up. With a symbolic batch the same
/// graph is refused with the batched import's error.
#[test]
fn static_models_without_a_batch_axis() {
    use cnnpack::backend::cpu::reference::run_graph;
    use cnnpack::import::UNBATCHED;
    let with_input = |dims: &[Option<i64>], nodes: Vec<NodeProto>, inits: Vec<TensorProto>| {
        let mut m = model(13, &[], nodes, inits, &["y"]);
        m.graph.as_mut().unwrap().input[0] = value("x", dims);
        parse(&m)
    };
    // Column sums of a [3, 4] matrix: ReduceSum over axis 0, keepdims 0.
    let reduce = || {
        vec![node(
            "ReduceSum",
            "sum",
            &["x", "axes"],
            "y",
            vec![attr_i("keepdims", 0)],
        )]
    };
    let g = with_input(&[Some(3), Some(4)], reduce(), vec![i64_typed("axes", &[0])]).unwrap();
    assert_eq!(g.metadata.get(UNBATCHED).map(String::as_str), Some("true"));
    assert_eq!(g.input.item_shape, vec![3, 4]);
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 4]);
    let x = Tensor::new(vec![1, 3, 4], (0..12).map(|v| v as f32).collect()).unwrap();
    let y = run_graph(&g, &x).unwrap().remove(0);
    assert_eq!(y.data, vec![12.0, 15.0, 18.0, 21.0]);
    // The same over a symbolic batch: the batched import's error, nothing lifted.
    let e = with_input(&[None, Some(4)], reduce(), vec![i64_typed("axes", &[0])]).unwrap_err();
    assert!(
        matches!(e, ImportError::UnsupportedAttribute { .. }) && e.to_string().contains("batch"),
        "{e}"
    );
    // A rank-1 input: Softmax over its only axis, Concat with a constant after it, and
    // a Transpose-free Unsqueeze: [3] -> [1, 5] under the leading 1 -> [1, 1, 5].
    let nodes = vec![
        node("Softmax", "sm", &["x"], "s", vec![attr_i("axis", 0)]),
        node("Concat", "cat", &["s", "c"], "cc", vec![attr_i("axis", 0)]),
        node("Unsqueeze", "un", &["cc", "ax"], "y", vec![]),
    ];
    let inits = vec![f32_raw("c", &[2], &[7.0, 8.0]), i64_typed("ax", &[0])];
    let g = with_input(&[Some(3)], nodes, inits).unwrap();
    assert_eq!(g.infer_shapes(1).unwrap()["y"], vec![1, 1, 5]);
    let x = Tensor::new(vec![1, 3], vec![0.0, 0.0, 0.0]).unwrap();
    let y = run_graph(&g, &x).unwrap().remove(0);
    let third = 1.0 / 3.0;
    for (got, want) in y.data.iter().zip([third, third, third, 7.0, 8.0]) {
        assert!((got - want).abs() < 1e-6, "{:?}", y.data);
    }
}

/// Gather with constant indices on a computed value: a scalar index drops the axis, a
/// list with a negative entry gathers in its order, a 2-D index array puts its two axes
/// in place of the gathered one.
#[test]
fn gather_index_shapes() {
    use cnnpack::backend::cpu::reference::run_graph;
    let gather = |indices: TensorProto| {
        parse(&model(
            13,
            &[3, 4],
            vec![node(
                "Gather",
                "g",
                &["x", "i"],
                "y",
                vec![attr_i("axis", 1)],
            )],
            vec![indices],
            &["y"],
        ))
        .unwrap()
    };
    // x[n, c, w] = 100 n + 10 c + w.
    let x = Tensor::new(
        vec![2, 3, 4],
        (0..24)
            .map(|i| (100 * (i / 12) + 10 * ((i / 4) % 3) + i % 4) as f32)
            .collect(),
    )
    .unwrap();
    let rows = |g: &Graph| run_graph(g, &x).unwrap().remove(0);
    let mut scalar = i64_typed("i", &[2]);
    scalar.dims = vec![];
    let y = rows(&gather(scalar));
    assert_eq!(y.shape, vec![2, 4]);
    assert_eq!(&y.data[..4], &[20.0, 21.0, 22.0, 23.0]);
    let y = rows(&gather(i64_typed("i", &[2, -3, 2])));
    assert_eq!(y.shape, vec![2, 3, 4]);
    assert_eq!(
        &y.data[..12],
        &[20., 21., 22., 23., 0., 1., 2., 3., 20., 21., 22., 23.]
    );
    let mut grid = i64_typed("i", &[0, 2, 1, 1]);
    grid.dims = vec![2, 2];
    let y = rows(&gather(grid));
    assert_eq!(y.shape, vec![2, 2, 2, 4]);
    // Image 0: channels 0, 2, 1, 1; image 1 (offset 16): channel 0 of it, then 2.
    assert_eq!(&y.data[8..16], &[10., 11., 12., 13., 10., 11., 12., 13.]);
    assert_eq!(
        &y.data[16..24],
        &[100., 101., 102., 103., 120., 121., 122., 123.]
    );
}
