//! GPU faults and limits: a buffer over the adapter's limit is a typed error naming the
//! buffer and the limit (through wgpu's error scopes), a batch whose activations exceed
//! the binding limit names the layer and the limit, and after a device loss every call
//! returns `DeviceLost` until `Engine::recover` (or a new `Engine`) opens a new device.
//! Skipped without an adapter unless CNNPACK_REQUIRE_GPU=1. Each test opens a device of
//! its own (`common::fresh_gpu_engine`), not the binary's shared one: one of them
//! destroys its device.

mod common;
use cnnpack::backend::gpu::GpuError;
use cnnpack::engine::{Engine, EngineError};
use cnnpack::graph::Tensor;

fn engine() -> Option<Engine> {
    let g = cnnpack::zoo::build("lenet5", 9).expect("lenet5 builds");
    common::fresh_gpu_engine(g)
}

fn input() -> Tensor {
    let mut t = Tensor::zeros(vec![1, 1, 28, 28]);
    for (i, v) in t.data.iter_mut().enumerate() {
        *v = (i % 17) as f32 / 17.0;
    }
    t
}

#[test]
fn buffer_over_the_adapter_limit_is_an_error_and_the_device_still_works() {
    let Some(e) = engine() else { return };
    let want = e.run(&input()).expect("runs");
    let ctx = e.gpu_context().expect("gpu");
    let max = ctx.limits().max_buffer_size;
    let r = ctx.try_create_buffer(
        "oversized test buffer",
        (max + 4).next_multiple_of(4),
        wgpu::BufferUsages::STORAGE,
    );
    match r {
        Err(GpuError::Validation { layer, message }) => {
            assert_eq!(layer, "oversized test buffer");
            assert!(
                message.contains(&max.to_string()) || message.to_lowercase().contains("max"),
                "the message names the limit: {message}"
            );
            println!("over-limit buffer: {message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    // The same context and engine keep working.
    assert_eq!(e.run(&input()).expect("runs after the error"), want);
}

#[test]
fn batch_over_the_binding_limit_names_the_layer_and_limit() {
    let Some(e) = engine() else { return };
    let limit = e.gpu_context().expect("gpu").max_binding_bytes();
    // conv1's output is 6*28*28 floats per item: enough items exceed any limit.
    let batch = (limit / (6 * 28 * 28 * 4) + 1) as usize;
    let err = e.gpu_model(batch).expect_err("too large a batch");
    let msg = err.to_string();
    assert!(
        matches!(err, EngineError::Gpu(GpuError::Unsupported { .. })),
        "{msg}"
    );
    assert!(msg.contains(&limit.to_string()), "names the limit: {msg}");
    assert!(msg.contains("max_storage_buffer_binding_size"), "{msg}");
    let layer = e
        .graph()
        .nodes
        .iter()
        .any(|n| msg.contains(&format!("'{}'", n.name)));
    assert!(layer, "names a layer: {msg}");
    println!("batch {batch}: {msg}");
    // A batch that fits still runs.
    e.run(&input()).expect("batch 1 runs");
}

#[test]
fn device_loss_is_an_error_and_the_engine_recovers() {
    let Some(e) = engine() else { return };
    let x = input();
    let want = e.run(&x).expect("runs");
    let ctx = e.gpu_context().expect("gpu");
    ctx.device().destroy();
    // The loss is reported by the callback on the next device call at the latest.
    let mut lost = false;
    for _ in 0..3 {
        match e.run(&x) {
            Err(EngineError::Gpu(GpuError::DeviceLost(m))) => {
                println!("after destroy: {m}");
                lost = true;
                break;
            }
            Err(other) => println!("after destroy (before the callback): {other}"),
            Ok(_) => println!("after destroy: a run still succeeded"),
        }
    }
    assert!(lost, "DeviceLost is reported");
    assert!(ctx.is_lost());
    // Async requests on the lost device fail too, without hanging.
    let r = pollster::block_on(e.run_async(&x));
    assert!(r.is_err(), "async run on a lost device");
    drop(ctx);
    assert!(e.recover().expect("a new device opens"), "recovered");
    assert!(
        !e.recover().expect("nothing to do"),
        "second recover is a no-op"
    );
    assert_eq!(e.run(&x).expect("runs after recovery"), want);
    // A brand-new engine works as well.
    let fresh = engine().expect("adapter still there");
    assert_eq!(fresh.run(&x).expect("new engine runs"), want);
}
