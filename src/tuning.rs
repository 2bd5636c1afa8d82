//! `Tuning`: every knob that changes which kernel runs a layer, or how, in one typed
//! value that is passed explicitly to engines and models.
//!
//! The library reads no environment variable for these (only the command line does:
//! `cnnpack --tune KEY=VALUE`, and for old scripts the `CNNPACK_*` variables listed at
//! [`Tuning::ENV`]). A program embedding cnnpack, or a test, sets them in code:
//!
//! ```
//! use cnnpack::tuning::{ConvKernel, Tuning};
//! let mut tuning = Tuning::default();
//! tuning.gpu.conv_kernel = ConvKernel::Tiled;
//! tuning.set("cpu.avx512", "false").unwrap(); // the AVX2 kernels, as on a CPU without AVX-512
//! assert!(!tuning.cpu.avx512);
//! assert!(tuning.set("gpu.no_such_knob", "1").is_err());
//! ```
//!
//! The defaults are the measured choices (each knob's doc says where it was measured);
//! the knobs exist to force the other kernels for tests, comparisons and tuning runs.
//! This module is a leaf: it imports nothing else of the crate.

use serde::{Deserialize, Serialize};

/// Every kernel-selection knob, for the GPU and the CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// GPU models (`GpuModel::with_options`).
    pub gpu: GpuOptions,
    /// CPU models (`cpu::fast::Prepared`).
    pub cpu: CpuOptions,
}

/// Options for building a `GpuModel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuOptions {
    /// Caps the bytes of one weight binding below the adapter's
    /// `max_storage_buffer_binding_size` (tests force the split path with it).
    pub max_binding_bytes: Option<u64>,
    /// Caps the bytes of one activation buffer below the adapter's
    /// `max_storage_buffer_binding_size`/`max_buffer_size`: a batch whose buffers would
    /// not fit runs in pieces that do (`GpuModel::max_batch`; tests force the split with
    /// it).
    pub max_activation_bytes: Option<u64>,
    /// Fuse a Relu into the Conv/Linear before it (plan-level fusion).
    pub fuse_relu: bool,
    /// Dense conv kernel choice (tests force each one).
    pub conv_kernel: ConvKernel,
    /// K slices of `conv_gemm` when `conv_kernel` lets it choose (`Auto`, `Gemm`):
    /// `None` chooses per layer, `Some(n)` forces `n` (experiments).
    pub conv_split_k: Option<usize>,
    /// How convs with compressed weights run (tests force `Native`).
    pub compressed_conv: CompressedConv,
    /// K slices of the batch-small compressed Linear kernels (`pow2_fc`, `sketch_fc`):
    /// `None` chooses (1 on software adapters, about 16 code words per slice on GPUs),
    /// `Some(n)` forces `n` slices (at most one per code word of an input window; tests
    /// force the split path).
    pub fc_split_k: Option<usize>,
    /// Lanes per CSR row of the sparse Linear kernel (`sparse_fc`): `None` chooses per
    /// layer, `Some(n)` forces `n`, rounded up to a power of two in 1..=256.
    pub sparse_fc_lanes: Option<usize>,
    /// Which kernel runs pow2 (INQ) Linear layers (tests force each one).
    pub pow2_fc: Pow2Fc,
    /// Rows per workgroup of `pow2_fc_lut`: `None` chooses per layer, `Some(r)` with r
    /// in 4, 8, 16, 32, 64 forces it (experiments; other values choose).
    pub pow2_fc_rows: Option<usize>,
    /// Code quads `pow2_fc_lut` loads ahead per invocation, 1..=3: `None` takes 1, the
    /// measured default (tests force each depth).
    pub pow2_fc_prefetch: Option<usize>,
    /// How `run_profiled` times steps: `Some(true)` between the dispatches of one pass
    /// (where the adapter has `TIMESTAMP_QUERY_INSIDE_PASSES`), `Some(false)` or `None`
    /// one pass per step. See `GpuModel::profiles_in_pass`.
    pub profile_in_pass: Option<bool>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            max_binding_bytes: None,
            max_activation_bytes: None,
            fuse_relu: true,
            conv_kernel: ConvKernel::Auto,
            conv_split_k: None,
            compressed_conv: CompressedConv::Auto,
            fc_split_k: None,
            sparse_fc_lanes: None,
            pow2_fc: Pow2Fc::Auto,
            pow2_fc_rows: None,
            pow2_fc_prefetch: None,
            profile_in_pass: None,
        }
    }
}

/// Options of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuOptions {
    /// Run the AVX-512F kernels where the CPU has them; `false` runs the AVX2 ones in
    /// their place, as on a CPU without AVX-512 (to test or time them there).
    pub avx512: bool,
    /// While a graph runs, one more rayon worker spins for the run's forked work instead
    /// of sleeping between layers (`fast::on_pool`; SqueezeNet 4-15% faster at batch 1).
    /// It keeps one more core busy for the whole run, as ONNX Runtime's spinning threads
    /// do; `false` lets it sleep.
    pub spin: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            avx512: true,
            spin: true,
        }
    }
}

/// Which dense conv kernel to use for convs with 16 or more output channels per group
/// (fewer always run the direct kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvKernel {
    /// `Uniform` on CPU adapters (lavapipe), `Gemm` on GPUs.
    #[default]
    Auto,
    /// The first tiled implicit GEMM in workgroup memory (`conv_fwd_tiled`), kept for
    /// comparison and retraining (Linear at batch >= 32 follows the conv choice).
    Tiled,
    /// The implicit GEMM with overlapped loads and split-K (`conv_gemm`), K slices chosen
    /// per layer (`GpuOptions::conv_split_k` forces them).
    Gemm,
    /// `Gemm` with exactly this many K slices (at most one per 16-deep K tile; tests).
    GemmSplits(usize),
    /// `Gemm` with 64 x 128 tiles and 4x8 register blocks (`conv_gemm_wide`): fewer
    /// workgroup loads per FMA, half the tiles. Not measured on a GPU yet, so not chosen
    /// by `Auto`.
    GemmWide,
    /// Weights in uniform buffers, 32 channels per invocation (`conv_fwd_ubo`); falls back
    /// to `Tiled` for kernels of more than 512 taps (kh * kw).
    Uniform,
}

/// How a conv layer with sketch, pow2 or sparse weights runs on the GPU.
///
/// A conv reuses every weight across all output pixels, so it is compute-bound and the
/// compressed encoding saves file and upload bytes but not necessarily time. On lavapipe
/// (docs/benchmarks-archive.md, "Compressed kernels vs dense") the pow2 conv ran at 0.03-0.04x and
/// the sparse conv at 0.12-0.14x (30% density) of the dense conv, and sketch convs with
/// m = 4 at 0.6-0.8x; there the weights are decoded once at upload instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressedConv {
    /// Decode to dense f32 once at upload (the dense conv kernel runs them), except
    /// sketch convs with at most 2 bases on CPU adapters (lavapipe), where the bit-plane
    /// kernel is faster. Measured on an NVIDIA H200 (AlexNet, batch 1): against the first
    /// tiled dense kernel the sketch convs ran at 0.15-0.51x (m = 4..1) and the pow2 convs
    /// at 0.66-0.88x, the sparse convs at 1.4x (50% density) to 10x (5%); against
    /// `conv_gemm`, the dense kernel that replaced it, the sparse convs ran at 0.49x (10%)
    /// and 0.89x (5%).
    #[default]
    Auto,
    /// Always the compressed kernels (bit-plane sketch, pow2 decode, CSR sparse).
    Native,
    /// Always decode to dense f32 at upload.
    Decoded,
}

/// The kernel of a pow2 (INQ) Linear layer on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pow2Fc {
    /// `pow2_fc_lut` on GPUs, `pow2_fc` on software adapters (lavapipe), where the
    /// table lookup is a per-lane gather: 6.5x slower there (AlexNet fc6, batch 1, 340 ms
    /// against 52 ms; the dense GEMV takes 335 ms). On an H200 `pow2_fc_lut` ran fc6 at 4
    /// bits in 20 us against `pow2_fc`'s 73 us.
    #[default]
    Auto,
    /// `pow2_fc`: inputs in a uniform window, each code's value built from its bits.
    Window,
    /// `pow2_fc_lut`: inputs staged in workgroup memory, values from a workgroup table.
    Lut,
}

/// A `--tune` key or value that does not fit.
#[derive(Debug, thiserror::Error)]
#[error("tuning '{key}': {reason}")]
pub struct TuningError {
    /// The key as given.
    pub key: String,
    /// What is wrong, with the keys or values that would fit.
    pub reason: String,
}

impl Tuning {
    /// The environment variables the command line still maps onto keys (scripts written
    /// before `--tune` use them): `(variable, key, value)`, where an empty value means
    /// "the variable's own value" and another value is set whenever the variable is
    /// present. Read by the CLI only.
    pub const ENV: &'static [(&'static str, &'static str, &'static str)] = &[
        ("CNNPACK_CONV_KERNEL", "gpu.conv_kernel", ""),
        ("CNNPACK_CONV_SPLITK", "gpu.conv_split_k", ""),
        ("CNNPACK_FC_SPLITK", "gpu.fc_split_k", ""),
        ("CNNPACK_SPARSE_FC_LANES", "gpu.sparse_fc_lanes", ""),
        ("CNNPACK_POW2_FC", "gpu.pow2_fc", ""),
        ("CNNPACK_POW2_FC_ROWS", "gpu.pow2_fc_rows", ""),
        ("CNNPACK_POW2_FC_PREFETCH", "gpu.pow2_fc_prefetch", ""),
        ("CNNPACK_PROFILE", "gpu.profile", ""),
        ("CNNPACK_CPU_NO_AVX512", "cpu.avx512", "false"),
        ("CNNPACK_NO_SPIN", "cpu.spin", "false"),
    ];

    /// Every key `set` takes, `section.field`.
    pub fn keys() -> Vec<String> {
        let value = serde_json::to_value(Tuning::default()).expect("Tuning serializes");
        let mut keys = vec!["gpu.profile".to_string()];
        for (section, fields) in value.as_object().expect("Tuning is a struct") {
            for field in fields.as_object().expect("each section is a struct").keys() {
                keys.push(format!("{section}.{field}"));
            }
        }
        keys.sort();
        keys
    }

    /// Sets one knob from text, as `--tune KEY=VALUE` does: `key` is `gpu.FIELD` or
    /// `cpu.FIELD` (a field name alone where only one section has it), `value` is a
    /// number, `true`/`false`, `none` (back to the default choice) or an enum's
    /// kebab-case name (`gpu.conv_kernel=gemm-wide`). `gpu.profile=in-pass|per-pass`
    /// sets `gpu.profile_in_pass`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TuningError> {
        let err = |reason: String| TuningError {
            key: key.to_string(),
            reason,
        };
        let value = value.trim();
        let (key_full, value) = match (key.trim(), value) {
            ("gpu.profile" | "profile", "in-pass") => ("gpu.profile_in_pass".into(), "true"),
            ("gpu.profile" | "profile", "per-pass") => ("gpu.profile_in_pass".into(), "false"),
            ("gpu.profile" | "profile", other) => {
                return Err(err(format!("'{other}' is not in-pass or per-pass")))
            }
            (k, v) => (self.full_key(k).map_err(err)?, v),
        };
        let (section, field) = key_full.split_once('.').expect("full keys have a dot");
        let mut tree = serde_json::to_value(&*self).expect("Tuning serializes");
        let slot = tree
            .get_mut(section)
            .and_then(|s| s.get_mut(field))
            .expect("full_key returns existing keys");
        *slot = match value {
            "none" => serde_json::Value::Null,
            v => serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into())),
        };
        *self = serde_json::from_value(tree)
            .map_err(|e| err(format!("'{value}' does not fit ({e})")))?;
        Ok(())
    }

    /// `key` as `section.field`, or why it names no knob.
    fn full_key(&self, key: &str) -> Result<String, String> {
        let keys = Tuning::keys();
        if keys.iter().any(|k| k == key) {
            return Ok(key.to_string());
        }
        let matches: Vec<&String> = keys
            .iter()
            .filter(|k| k.split_once('.').is_some_and(|(_, f)| f == key))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(format!("no such knob; the knobs are {}", keys.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_every_kind_of_value() {
        let mut t = Tuning::default();
        t.set("gpu.conv_kernel", "gemm-wide").unwrap();
        t.set("fc_split_k", "4").unwrap();
        t.set("cpu.spin", "false").unwrap();
        t.set("gpu.profile", "in-pass").unwrap();
        t.set("gpu.pow2_fc", "lut").unwrap();
        assert_eq!(t.gpu.conv_kernel, ConvKernel::GemmWide);
        assert_eq!(t.gpu.fc_split_k, Some(4));
        assert!(!t.cpu.spin);
        assert_eq!(t.gpu.profile_in_pass, Some(true));
        assert_eq!(t.gpu.pow2_fc, Pow2Fc::Lut);
        t.set("gpu.fc_split_k", "none").unwrap();
        assert_eq!(t.gpu.fc_split_k, None);
        t.set("conv_kernel", "auto").unwrap();
        assert_eq!(t.gpu.conv_kernel, ConvKernel::Auto);
    }

    #[test]
    fn set_refuses_unknown_keys_and_values_and_keeps_the_old_value() {
        let mut t = Tuning::default();
        let e = t.set("gpu.conv_kernal", "tiled").unwrap_err();
        assert!(e.to_string().contains("gpu.conv_kernel"), "{e}");
        let e = t.set("gpu.conv_kernel", "fast").unwrap_err();
        assert!(e.to_string().contains("gemm-wide"), "{e}");
        assert!(t.set("gpu.fc_split_k", "-1").is_err());
        assert!(t.set("cpu.avx512", "maybe").is_err());
        assert!(t.set("gpu.profile", "sometimes").is_err());
        assert_eq!(t, Tuning::default());
    }

    #[test]
    fn round_trips_through_json() {
        let mut t = Tuning::default();
        t.gpu.conv_kernel = ConvKernel::GemmSplits(3);
        t.cpu.avx512 = false;
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tuning>(&json).unwrap(), t);
        // Missing fields take their defaults.
        let partial: Tuning = serde_json::from_str(r#"{"cpu": {"spin": false}}"#).unwrap();
        assert!(partial.cpu.avx512 && !partial.cpu.spin);
    }

    #[test]
    fn every_env_variable_maps_to_a_key() {
        let keys = Tuning::keys();
        for (var, key, _) in Tuning::ENV {
            assert!(keys.iter().any(|k| k == key), "{var} -> {key}");
        }
    }
}
