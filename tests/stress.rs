//! Concurrency: 8 threads x 200 inferences on one `Engine` (a zoo LeNet-5 with random
//! weights), on the CPU and on the GPU (lavapipe in CI), every result bit-equal to the
//! sequential one, no deadlock (a watchdog fails the test after a time limit), and
//! resident memory bounded. Also many `run_async` requests in flight at once.

mod common;
use cnnpack::engine::{DeviceKind, Engine, RunFuture};
use cnnpack::graph::{Rng, Tensor};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const RUNS: usize = 200;
/// Distinct inputs, so a run that picked up another thread's input or output shows.
const INPUTS: usize = 5;
/// Growth of resident memory allowed between the warm-up and the end (bytes).
const RSS_GROWTH: u64 = 96 << 20;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<RunFuture>();
};

/// Resident set size from /proc (None off Linux).
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn inputs() -> Vec<Tensor> {
    let mut rng = Rng::new(77);
    (0..INPUTS)
        .map(|_| {
            let mut t = Tensor::zeros(vec![1, 1, 28, 28]);
            t.data.iter_mut().for_each(|v| *v = rng.uniform());
            t
        })
        .collect()
}

/// Runs `f` on another thread; fails if it takes longer than `limit` (a deadlock).
fn with_watchdog(what: &str, limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().expect("the stress body finished"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished after {limit:?} (deadlock?)")
        }
    }
}

/// 8 threads x 200 runs, each checked bit for bit against the sequential result.
fn stress(engine: Engine, what: &'static str) {
    let engine = std::sync::Arc::new(engine);
    let xs = std::sync::Arc::new(inputs());
    let want: Vec<Vec<Tensor>> = xs
        .iter()
        .map(|x| engine.run(x).expect("sequential run"))
        .collect();
    let want = std::sync::Arc::new(want);
    // Warm-up done (pipelines, buffers); memory from here on must stay bounded.
    let before = rss_bytes();
    let t0 = Instant::now();
    with_watchdog(what, Duration::from_secs(300), {
        let (engine, xs, want) = (engine.clone(), xs.clone(), want.clone());
        move || {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let (engine, xs, want) = (&engine, &xs, &want);
                    s.spawn(move || {
                        for i in 0..RUNS {
                            let k = (t * 7 + i) % INPUTS;
                            let got = engine.run(&xs[k]).unwrap_or_else(|e| {
                                panic!("{what}: thread {t} run {i} failed: {e}")
                            });
                            assert!(
                                got == want[k],
                                "{what}: thread {t} run {i} (input {k}) differs from the sequential result"
                            );
                        }
                    });
                }
            });
        }
    });
    let after = rss_bytes();
    println!(
        "{what}: {} runs on {} in {:.2} s; RSS {:?} -> {:?} MiB",
        THREADS * RUNS,
        engine.device_name(),
        t0.elapsed().as_secs_f64(),
        before.map(|b| b >> 20),
        after.map(|b| b >> 20)
    );
    if let (Some(b), Some(a)) = (before, after) {
        assert!(
            a <= b + RSS_GROWTH,
            "{what}: resident memory grew from {b} to {a} bytes"
        );
    }
}

fn lenet() -> cnnpack::graph::Graph {
    cnnpack::zoo::build("lenet5", 5).expect("lenet5 builds")
}

/// The GPU engine (a device of its own, as an application's would be), or None
/// (printing why) when there is no adapter and CNNPACK_REQUIRE_GPU is not 1.
fn gpu_engine() -> Option<Engine> {
    common::fresh_gpu_engine(lenet())
}

#[test]
fn stress_cpu() {
    stress(
        Engine::new(lenet(), DeviceKind::Cpu).expect("cpu engine"),
        "cpu",
    );
}

#[test]
fn stress_gpu() {
    if let Some(e) = gpu_engine() {
        stress(e, "gpu");
    }
}

/// Many requests in flight at once through `run_async`, resolved in any order.
fn async_burst(engine: Engine, what: &'static str) {
    let engine = std::sync::Arc::new(engine);
    let xs = inputs();
    let want: Vec<Vec<Tensor>> = xs.iter().map(|x| engine.run(x).expect("run")).collect();
    with_watchdog(what, Duration::from_secs(300), move || {
        let before = rss_bytes();
        for round in 0..4 {
            let futs: Vec<(usize, RunFuture)> = (0..THREADS * 50)
                .map(|i| {
                    let k = (i + round) % INPUTS;
                    (k, engine.run_async(&xs[k]))
                })
                .collect();
            // Resolve from several threads at once, in reverse order of submission.
            let mut futs = futs;
            futs.reverse();
            let chunks: Vec<Vec<(usize, RunFuture)>> = {
                let mut out: Vec<Vec<_>> = (0..THREADS).map(|_| Vec::new()).collect();
                for (i, f) in futs.into_iter().enumerate() {
                    out[i % THREADS].push(f);
                }
                out
            };
            std::thread::scope(|s| {
                for chunk in chunks {
                    let want = &want;
                    s.spawn(move || {
                        for (k, f) in chunk {
                            let got = pollster::block_on(f).expect("async run");
                            assert!(got == want[k], "{what}: async result differs");
                        }
                    });
                }
            });
        }
        if let (Some(b), Some(a)) = (before, rss_bytes()) {
            assert!(a <= b + RSS_GROWTH, "{what}: RSS grew from {b} to {a}");
        }
    });
}

#[test]
fn async_burst_cpu() {
    async_burst(
        Engine::new(lenet(), DeviceKind::Cpu).expect("cpu engine"),
        "async cpu",
    );
}

#[test]
fn async_burst_gpu() {
    if let Some(e) = gpu_engine() {
        async_burst(e, "async gpu");
    }
}
