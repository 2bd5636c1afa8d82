//! Process-wide cache of compressed conv layers decoded to dense f32 weights.
//!
//! Why: on the CPU the fastest conv for sketch and pow2 weights is the dense im2col +
//! sgemm path on the decoded weights (measured; see `fast/mod.rs` and
//! docs/benchmarks.md), and decoding on every call cost more than the conv itself on
//! small spatial sizes (a sketched ResNet-18 ran at 0.27x dense at batch 1). So each
//! layer is decoded once and reused by every later call.
//!
//! Keyed by the address and length of the compressed array (the sketch bit words, the
//! pow2 code words or the sparse values) and validated by comparing the whole compressed conv (weights,
//! bias, geometry) with the stored copy, so a reused address never returns another
//! layer's weights. The check reads the compressed bytes only (`m/32` or `b/32` of
//! the dense bytes), far less than a decode.
//!
//! Memory: each entry holds the dense weights (4 bytes per weight, i.e. what the dense
//! model would use) plus a copy of the compressed layer. The total dense bytes are
//! capped at `CNNPACK_DECODED_CACHE_MB` MiB (default 1024); past the cap the oldest
//! entries are dropped (they are decoded again if used). `clear` empties it.

use crate::graph::Conv2d;
use crate::weights::Weights;
use std::sync::{Arc, Mutex};

/// One decoded layer.
struct Entry {
    /// Address and length (elements) of the compressed array it was decoded from.
    key: (usize, usize),
    /// The compressed conv as it was, for validation.
    compressed: Conv2d,
    /// The same conv with dense weights.
    dense: Arc<Conv2d>,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn cap_bytes() -> usize {
    std::env::var("CNNPACK_DECODED_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024)
        << 20
}

fn key_of(w: &Weights) -> Option<(usize, usize)> {
    match w {
        Weights::Sketch(s) => Some((s.bits().as_ptr() as usize, s.bits().len())),
        Weights::Pow2(p) => Some((p.codes().as_ptr() as usize, p.codes().len())),
        Weights::Sparse(s) => Some((s.values().as_ptr() as usize, s.values().len())),
        _ => None,
    }
}

fn dense_bytes(c: &Conv2d) -> usize {
    c.weight.parameters() * 4
}

/// `conv` with its weights decoded to `Weights::Dense`, from the cache when this very
/// layer was decoded before. Dense convs are returned as a copy, not cached.
pub fn dense_conv(conv: &Conv2d) -> Arc<Conv2d> {
    let Some(key) = key_of(&conv.weight) else {
        return Arc::new(decode(conv));
    };
    {
        let cache = CACHE
            .lock()
            .expect("the decoded-weight cache lock is never held across a panic");
        if let Some(e) = cache.iter().find(|e| e.key == key && e.compressed == *conv) {
            return e.dense.clone();
        }
    }
    // Decode outside the lock: other layers (and threads) go on meanwhile. Two threads
    // decoding the same layer at once both insert; the duplicate is harmless.
    let dense = Arc::new(decode(conv));
    let mut cache = CACHE
        .lock()
        .expect("the decoded-weight cache lock is never held across a panic");
    cache.push(Entry {
        key,
        compressed: conv.clone(),
        dense: dense.clone(),
    });
    let cap = cap_bytes();
    let mut total: usize = cache.iter().map(|e| dense_bytes(&e.dense)).sum();
    while total > cap && cache.len() > 1 {
        total -= dense_bytes(&cache[0].dense);
        cache.remove(0);
    }
    dense
}

fn decode(conv: &Conv2d) -> Conv2d {
    Conv2d {
        kernel: conv.kernel,
        stride: conv.stride,
        pads: conv.pads,
        dilation: conv.dilation,
        groups: conv.groups,
        weight: Weights::Dense(conv.weight.to_dense().into_owned()),
        bias: conv.bias.clone(),
    }
}

/// Drops every cached layer.
pub fn clear() {
    CACHE
        .lock()
        .expect("the decoded-weight cache lock is never held across a panic")
        .clear();
}

/// Number of cached layers and their dense bytes.
pub fn stats() -> (usize, usize) {
    let cache = CACHE
        .lock()
        .expect("the decoded-weight cache lock is never held across a panic");
    (
        cache.len(),
        cache.iter().map(|e| dense_bytes(&e.dense)).sum(),
    )
}
