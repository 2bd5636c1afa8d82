//! A model saved as .cnnpack and loaded again gives bit-identical outputs, on the CPU
//! and on the GPU: the format is lossless and nothing in the engine depends on where
//! the weights came from.

mod common;
use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::{Graph, Rng};
use common::data_dir;

fn assert_bit_identical(graph: Graph, name: &str) {
    let path = std::env::temp_dir().join(format!(
        "cnnpack-roundtrip-{}-{name}.cnnpack",
        std::process::id()
    ));
    cnnpack::format::save(&graph, &path).unwrap();
    let loaded = cnnpack::format::load_model(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut shape = vec![2];
    shape.extend(&graph.input.item_shape);
    let x = Rng::new(11).normal_tensor(shape, 1.0);
    for device in [DeviceKind::Cpu, DeviceKind::Gpu] {
        let a = Engine::with_options(graph.clone(), device, common::engine_options()).unwrap();
        if a.fallback_note().is_some() {
            println!("skipped {name} on the GPU: {}", a.fallback_note().unwrap());
            continue;
        }
        let b = Engine::new(loaded.clone(), device).unwrap();
        let (ya, yb) = (a.run(&x).unwrap(), b.run(&x).unwrap());
        let bits =
            |t: &cnnpack::graph::Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(ya.len(), yb.len());
        for (p, q) in ya.iter().zip(&yb) {
            assert_eq!(
                bits(p),
                bits(q),
                "{name} on {}: outputs differ after a .cnnpack round trip",
                a.device_name()
            );
        }
    }
}

#[test]
fn zoo_models_round_trip_bit_identically() {
    assert_bit_identical(cnnpack::zoo::build("lenet5", 3).unwrap(), "lenet5");
    assert_bit_identical(
        cnnpack::zoo::build("squeezenet1.1", 3).unwrap(),
        "squeezenet1.1",
    );
}

#[test]
fn onnx_models_round_trip_bit_identically() {
    let Some(data) = data_dir() else { return };
    for file in ["cifar/resnet20.onnx", "lenet/lenet5_original.onnx"] {
        let graph = cnnpack::format::load_model(&data.join(file)).unwrap();
        assert_bit_identical(graph, &file.replace('/', "_"));
    }
}
