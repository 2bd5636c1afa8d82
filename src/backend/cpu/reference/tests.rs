//! Hand-computed cases: the reference must be right before anything is compared to it.

use super::*;
use crate::graph::{fold, BinaryKind, Conv2d, GraphBuilder, Linear, Pool2d, Rng};
use crate::weights::Weights;

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

fn conv(w: Tensor, stride: usize, pad: usize, dilation: usize, groups: usize) -> Conv2d {
    Conv2d {
        kernel: [w.shape[2], w.shape[3]],
        stride: [stride; 2],
        pads: [pad; 4],
        dilation: [dilation; 2],
        groups,
        weight: Weights::Dense(w),
        bias: None,
    }
}

#[test]
fn conv_by_hand() {
    // 1x1x3x3 input 1..9, 2x2 kernel of ones, stride 1, no pad: window sums.
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let y = conv2d(&x, &conv(Tensor::full(vec![1, 1, 2, 2], 1.0), 1, 0, 1, 1));
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, vec![12., 16., 24., 28.]);
    // Padding 1, stride 2: corners see 4 elements each.
    let y = conv2d(&x, &conv(Tensor::full(vec![1, 1, 2, 2], 1.0), 2, 1, 1, 1));
    assert_eq!(y.data, vec![1., 5., 11., 28.]);
    // Dilation 2 with a 2x2 kernel reads the four corners.
    let y = conv2d(&x, &conv(Tensor::full(vec![1, 1, 2, 2], 1.0), 1, 0, 2, 1));
    assert_eq!(y.data, vec![1. + 3. + 7. + 9.]);
}

#[test]
fn conv_groups_read_their_own_channels() {
    // Two channels, depthwise 1x1: channel c scaled by c+1.
    let x = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    let y = conv2d(&x, &conv(t(&[2, 1, 1, 1], &[1., 2.]), 1, 0, 1, 2));
    assert_eq!(y.data, vec![1., 2., 6., 8.]);
}

#[test]
fn linear_by_hand() {
    let x = t(&[2, 3], &[1., 2., 3., -1., 0., 1.]);
    let fc = Linear {
        weight: Weights::Dense(t(&[2, 3], &[1., 0., 1., 0., 1., 0.])),
        bias: Some(t(&[2], &[10., 20.])),
    };
    assert_eq!(linear(&x, &fc).data, vec![14., 22., 10., 20.]);
}

#[test]
fn pooling_rules() {
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let mut p = Pool2d {
        kernel: [2, 2],
        stride: [2, 2],
        pads: [0; 4],
        ceil_mode: true,
        count_include_pad: false,
    };
    // ceil_mode keeps the partial windows at the right and bottom.
    let y = max_pool(&x, &p);
    assert_eq!(y.shape, vec![1, 1, 2, 2]);
    assert_eq!(y.data, vec![5., 6., 8., 9.]);
    let y = avg_pool(&x, &p);
    assert_eq!(y.data, vec![3., 4.5, 7.5, 9.]);
    // Padding: excluded from the divisor unless count_include_pad.
    p.ceil_mode = false;
    p.pads = [1; 4];
    p.kernel = [3, 3];
    // 3x3 windows at stride 2 over the padded 5x5 see {1,2,4,5}, {2,3,5,6}, {4,5,7,8}, {5,6,8,9}.
    let y = avg_pool(&x, &p);
    assert_eq!(y.data, vec![3., 4., 6., 7.]);
    p.count_include_pad = true;
    assert_eq!(
        avg_pool(&x, &p).data,
        vec![12. / 9., 16. / 9., 24. / 9., 28. / 9.]
    );
    // Max pool never picks padding, even for all-negative windows.
    let neg = map(&x, |v| -v);
    assert_eq!(max_pool(&neg, &p).data, vec![-1., -2., -4., -5.]);
    assert_eq!(global_avg_pool(&x).data, vec![5.]);
}

#[test]
fn pointwise_and_normalisation() {
    let x = t(&[1, 2, 1, 1], &[1., 2.]);
    let c = t(&[2, 1, 1], &[10., 20.]);
    assert_eq!(
        const_binary(&x, BinaryKind::Sub, &c, true).data,
        vec![9., 18.]
    );
    assert_eq!(
        const_binary(&x, BinaryKind::Div, &c, false).data,
        vec![0.1, 0.1]
    );
    let s = softmax(&t(&[1, 3], &[1., 2., 3.]));
    assert!((s.data.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!((s.data[2] - 0.665_240_9).abs() < 1e-6);
    // LRN of size 1 with alpha = 1: x / (1 + x^2)^1.
    let y = lrn(&x, 1, 1.0, 1.0, 1.0);
    assert_eq!(y.data, vec![0.5, 0.4]);
    let bn = batch_norm(
        &x,
        &t(&[2], &[2., 1.]),
        &t(&[2], &[0., 1.]),
        &t(&[2], &[1., 0.]),
        &t(&[2], &[4., 1.]),
        0.0,
    );
    assert_eq!(bn.data, vec![0., 3.]);
}

#[test]
fn layout_ops() {
    let x = t(&[1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let s = slice(&x, &[0, 0, 0, 0], &[1, 2, 2, 2], &[1, 1, 2, 2]);
    assert_eq!(s.shape, vec![1, 2, 1, 1]);
    assert_eq!(s.data, vec![1., 5.]);
    let p = pad(
        &s,
        &[0, 1, 0, 0, 0, 1, 0, 0],
        0.0,
        crate::graph::PadMode::Constant,
    );
    assert_eq!(p.shape, vec![1, 4, 1, 1]);
    assert_eq!(p.data, vec![0., 1., 5., 0.]);
    let c = concat(&[&s, &s], 1);
    assert_eq!(c.data, vec![1., 5., 1., 5.]);
}

#[test]
fn batchnorm_folds_into_conv() {
    let mut b = GraphBuilder::new("x", &[3, 9, 9], 3);
    let x = b.input();
    let y = b.conv(&x, 5, 3, 2, 1, 1);
    let y = b.batch_norm(&y);
    let mut g = b.finish(&[&y]).unwrap();
    // Non-trivial statistics so the fold has something to do.
    let mut rng = Rng::new(9);
    if let Op::BatchNorm {
        scale,
        bias,
        mean,
        var,
        ..
    } = &mut g.nodes[1].op
    {
        for t in [scale, bias, mean] {
            t.data.iter_mut().for_each(|v| *v = rng.normal());
        }
        var.data.iter_mut().for_each(|v| *v = 0.5 + rng.uniform());
    }
    let input = rng.normal_tensor(vec![2, 3, 9, 9], 1.0);
    let want = run_graph(&g, &input).unwrap();
    let folded = fold(g).unwrap();
    assert_eq!(folded.nodes.len(), 1);
    let got = run_graph(&folded, &input).unwrap();
    assert!(
        got[0].max_abs_diff(&want[0]) < 1e-4,
        "diff {}",
        got[0].max_abs_diff(&want[0])
    );
}

#[test]
fn bad_input_shape_is_an_error() {
    let mut b = GraphBuilder::new("x", &[1, 4, 4], 1);
    let x = b.input();
    let y = b.relu(&x);
    let g = b.finish(&[&y]).unwrap();
    let err = run_graph(&g, &Tensor::zeros(vec![1, 2, 4, 4])).unwrap_err();
    assert!(err.to_string().contains("[N, 1, 4, 4]"), "{err}");
}
