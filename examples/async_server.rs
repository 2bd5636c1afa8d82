//! Many concurrent inference requests from one thread: a tokio current-thread runtime
//! spawns a task per request, each awaiting `Engine::run_async`. No thread is blocked
//! per request: the GPU readbacks are driven by the engine's single poll thread (the
//! CPU engine computes on the rayon pool), and every await just parks its task.
//!
//! Run: `cargo run --release --example async_server -- [MODEL] [REQUESTS] [gpu|cpu]`
//! (MODEL defaults to a zoo LeNet-5 with random weights; `.onnx` or `.cnnpack` files
//! work too). On lavapipe the "GPU" is the CPU: its throughput is a CPU number.

use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::{Rng, Tensor};
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let graph = match args.first().map(String::as_str) {
        None | Some("lenet5") => cnnpack::zoo::build("lenet5", 1)?,
        Some(path) => cnnpack::format::load_model(std::path::Path::new(path))?,
    };
    let requests: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let device = match args.get(2).map(String::as_str) {
        Some("cpu") => DeviceKind::Cpu,
        _ => DeviceKind::Gpu,
    };
    let engine = Arc::new(Engine::new(graph, device)?);
    if let Some(note) = engine.fallback_note() {
        println!("{note}");
    }
    let mut shape = vec![1];
    shape.extend(&engine.graph().input.item_shape);
    let mut rng = Rng::new(7);
    let inputs: Vec<Tensor> = (0..16)
        .map(|_| {
            let mut t = Tensor::zeros(shape.clone());
            t.data.iter_mut().for_each(|v| *v = rng.uniform());
            t
        })
        .collect();
    // Warm up (plans the model and compiles the pipelines) and keep references.
    let want: Vec<Vec<Tensor>> = inputs
        .iter()
        .map(|x| engine.run(x))
        .collect::<Result<_, _>>()?;

    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let t0 = Instant::now();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..requests)
            .map(|i| {
                let engine = engine.clone();
                let x = inputs[i % inputs.len()].clone();
                // run_async submits now; the task only awaits the readback.
                tokio::spawn(async move { (i, engine.run_async(&x).await) })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut bad = 0;
    for r in results {
        let (i, outputs) = r?;
        if outputs? != want[i % inputs.len()] {
            bad += 1;
        }
    }
    println!(
        "{requests} concurrent requests on {} from one thread: {:.3} s, {:.0} requests/s, {bad} mismatches",
        engine.device_name(),
        secs,
        requests as f64 / secs
    );
    anyhow::ensure!(bad == 0, "{bad} results differ from sequential runs");
    Ok(())
}
