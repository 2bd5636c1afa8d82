//! Power-of-two (INQ) Linear on GPUs: `pow2_fc_lut` (shaders/pow2_fc_lut.wgsl.tmpl), a
//! table-decode GEMV in one dispatch, generated per bit width, items per workgroup, rows
//! per workgroup and input alignment.
//!
//! A workgroup is `ROWS` output rows x `256 / ROWS` K slices; the slices' sums meet in
//! workgroup memory, so K is split across 256 invocations without a reduce dispatch (on
//! an H200 each extra dispatch of a step cost ~7 us, a fifth of AlexNet fc6's budget).
//! The codes are uploaded as `[row block][quad][ROWS][4 words]` (rows padded to whole
//! blocks and whole quads with zero codes), so each invocation loads 4 words at once and
//! a workgroup's loads of one step are contiguous. The 2^b code values sit in a workgroup
//! table; a code costs a shift, a mask, one table load and one fma per batch item (up to
//! 8 items per workgroup, each decoded weight reused). The shader text spells out one
//! quad's codes with constant shifts and indices (`quad_body`): nothing is left for a
//! driver to unroll. Rows are split into chunks whose codes fit one storage binding.
//!
//! Software adapters (lavapipe) run `pow2_fc` (pow2.wgsl) instead: there the table load
//! is a per-lane gather (`Pow2Fc::Auto`).

use super::context::{uw, Bind, Dispatch, Kernel, Slot};
use super::encode::{bias_or_zeros, StepIo};
use super::select;
use super::GpuError;
use crate::graph::Linear;
use crate::weights::Pow2Weights;
use std::fmt::Write as _;
use std::sync::Arc;

const TEMPLATE: &str = include_str!("../../../shaders/pow2_fc_lut.wgsl.tmpl");

/// Bindings of `pow2_fc_lut`: input, codes, bias, output, params (as a dense conv's).
const LAYOUT: [Slot; 5] = super::conv::LAYOUT;

/// Invocations per workgroup: rows x K slices.
const INVOCATIONS: usize = 256;
/// Most batch items per workgroup (the shader has 8 accumulators).
const MAX_ITEMS: usize = select::POW2_LUT_MAX_ITEMS;

/// One generated variant of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub(crate) bits: u32,
    pub(crate) items: usize,
    pub(crate) rows: usize,
    /// Inputs bound as vec4s (K % 4 == 0: every quad's inputs 16-byte aligned).
    pub(crate) aligned: bool,
    /// Code quads each invocation loads ahead of the one it decodes (1..=3).
    pub(crate) prefetch: usize,
}

/// Items up to this many get two accumulators each.
const PAIRED_ITEMS: usize = 4;

/// The generated kernel of `v`.
fn kernel(io: &StepIo, v: Variant) -> Arc<Kernel> {
    io.ctx.kernel_generated(
        format!(
            "pow2_fc_lut b{} items{} rows{} aligned{} prefetch{}",
            v.bits, v.items, v.rows, v.aligned, v.prefetch
        ),
        || lut_source(v),
        "pow2_fc_lut",
        &LAYOUT,
        // The shader writes every table entry and slice sum before reading it.
        false,
    )
}

/// The shader text of variant `v`.
pub(crate) fn lut_source(v: Variant) -> String {
    let cpw = crate::weights::codes_per_word(v.bits);
    let (xtype, x4, x1) = if v.aligned {
        (
            "vec4<f32>",
            "    return x[i >> 2u];",
            "    return x[i >> 2u][i & 3u];",
        )
    } else {
        (
            "f32",
            "    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);",
            "    return x[i];",
        )
    };
    let mut bases = String::new();
    for i in 0..v.items {
        // Items past the batch read the last item (in bounds); their sums are dropped.
        let _ = writeln!(
            bases,
            "    let n{i} = min(n_first + {i}u, p.batch - 1u);\n    let xb{i} = n{i} * p.k;"
        );
    }
    let paired = v.items <= PAIRED_ITEMS;
    let mut decl = String::new();
    let mut sums = vec![];
    for i in 0..v.items {
        let _ = writeln!(decl, "    var acc{i} = 0.0;");
        if paired {
            let _ = writeln!(decl, "    var acc{i}b = 0.0;");
            sums.push(format!("acc{i} + acc{i}b"));
        } else {
            sums.push(format!("acc{i}"));
        }
    }
    // Quads q, q + SLICES, ... in registers n0, n1, ...: the loop takes n0 as `c`,
    // shifts the rest down and loads quad q + d * SLICES into the last.
    let d = v.prefetch.clamp(1, select::POW2_MAX_PREFETCH);
    let mut init = String::new();
    for j in 0..d {
        let at = match j {
            0 => "q".to_string(),
            _ => format!("min(q + {j}u * SLICES, last)"),
        };
        let _ = writeln!(init, "        var n{j} = codes[cbase + {at} * ROWS];");
    }
    let mut rotate = String::from("            let c = n0;\n");
    for j in 1..d {
        let _ = writeln!(rotate, "            n{} = n{j};", j - 1);
    }
    let _ = writeln!(
        rotate,
        "            n{} = codes[cbase + min(q + {d}u * SLICES, last) * ROWS];",
        d - 1
    );
    TEMPLATE
        .replace("{{PREFETCH_INIT}}", &init)
        .replace("{{PREFETCH_ROTATE}}", &rotate)
        .replace("{{ACC_DECL}}", &decl)
        .replace("{{ACC_SUM}}", &sums.join(", "))
        .replace("{{BITS}}", &v.bits.to_string())
        .replace("{{CPW}}", &cpw.to_string())
        .replace("{{ITEMS}}", &v.items.to_string())
        .replace("{{ROWS}}", &v.rows.to_string())
        .replace("{{SLICES}}", &(INVOCATIONS / v.rows).to_string())
        .replace("{{XTYPE}}", xtype)
        .replace("{{X4_BODY}}", x4)
        .replace("{{X1_BODY}}", x1)
        .replace("{{ITEM_BASES}}", &bases)
        .replace(
            "{{QUAD_BODY}}",
            &quad_body(v.bits, cpw, v.items, paired, |i, off| {
                format!("x4(xb{i} + kq + {off}u)")
            }),
        )
        .replace(
            "{{TAIL_BODY}}",
            &quad_body(v.bits, cpw, v.items, paired, |i, off| {
                format!("x4_tail(n{i}, kq + {off}u)")
            }),
        )
}

/// One quad `c` (4 code words, `4 * cpw` codes) dotted with the inputs from `kq` on: for
/// every 4 inputs the items' vec4s are loaded once (`load(item, offset)` spells the
/// load), then each of the 4 codes is extracted with constant shifts, looked up and
/// fma-ed into every item's accumulator (`paired`: odd codes into the `b` ones).
fn quad_body(
    bits: u32,
    cpw: usize,
    items: usize,
    paired: bool,
    load: impl Fn(usize, usize) -> String,
) -> String {
    const LANE: [&str; 4] = ["x", "y", "z", "w"];
    let mask = (1u32 << bits) - 1;
    let mut s = String::new();
    for v in 0..cpw {
        for i in 0..items {
            let _ = writeln!(s, "            let x{i}_{v} = {};", load(i, 4 * v));
        }
        for (l, lane) in LANE.iter().enumerate() {
            let e = 4 * v + l;
            let (word, j) = (LANE[e / cpw], (e % cpw) as u32);
            let shift = bits * j;
            let code = match shift {
                0 => format!("c.{word} & {mask}u"),
                _ if shift + bits == 32 => format!("c.{word} >> {shift}u"),
                _ => format!("(c.{word} >> {shift}u) & {mask}u"),
            };
            let _ = writeln!(s, "            let w{e} = lut[{code}];");
            let b = if paired && e % 2 == 1 { "b" } else { "" };
            for i in 0..items {
                let _ = writeln!(
                    s,
                    "            acc{i}{b} = fma(x{i}_{v}.{lane}, w{e}, acc{i}{b});"
                );
            }
        }
    }
    s
}

/// Records a pow2 Linear with `pow2_fc_lut` (`l.weight` must be `Weights::Pow2(w)`),
/// `rows` output rows per workgroup and `prefetch` quads loaded ahead
/// (`select::FcChoice::Pow2Lut`).
pub(crate) fn encode_linear(
    io: &StepIo,
    l: &Linear,
    w: &Pow2Weights,
    rows_per_workgroup: usize,
    prefetch: usize,
) -> Result<Vec<Dispatch>, GpuError> {
    let (batch, k) = io.linear_dims("pow2", w.row_len(), w.shape())?;
    let rows = w.rows();
    let items = batch.clamp(1, MAX_ITEMS);
    let item_groups = batch.div_ceil(items);
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    if item_groups > max {
        return Err(io.unsupported(format!(
            "batch {batch} needs {item_groups} workgroups, over the per-dimension limit {max}"
        )));
    }
    let v = Variant {
        bits: w.bits(),
        items,
        rows: rows_per_workgroup,
        // As vec4s only when the binding (batch * K floats) holds whole vec4s: a last
        // partial vec4 would be out of bounds of an array<vec4<f32>>.
        aligned: k % 4 == 0,
        prefetch,
    };
    let cpw = w.codes_per_word();
    let quads = w.words_per_row().div_ceil(4);
    // Quads whose 4 * cpw inputs all lie inside K.
    let full = k / (4 * cpw);
    let block_bytes = (quads * v.rows * 16) as u64;
    let blocks_per = ((io.max_binding / block_bytes.max(1)) as usize)
        .min(rows.div_ceil(v.rows))
        .min(max);
    if blocks_per == 0 {
        return Err(io.unsupported(format!(
            "{} rows' {block_bytes} bytes of codes exceed the {}-byte binding limit",
            v.rows, io.max_binding
        )));
    }
    let kernel = kernel(io, v);
    let bias = bias_or_zeros(l.bias.as_ref(), rows);
    let rows_per = blocks_per * v.rows;
    let mut out = vec![];
    for r0 in (0..rows).step_by(rows_per) {
        let n = rows_per.min(rows - r0);
        let blocks = n.div_ceil(v.rows);
        let label = format!("{} rows {r0}..{}", io.name, r0 + n);
        let codes = upload_blocks(io, &label, w, r0, n, v.rows, quads);
        let bias_buf = io.ctx.upload(&format!("{label} bias"), &bias[r0..r0 + n]);
        let params = [
            uw(n),
            uw(rows),
            uw(r0),
            uw(k),
            uw(batch),
            uw(quads),
            uw(full),
            w.n1() as u32,
            io.relu as u32,
        ];
        out.push(io.ctx.dispatch(
            &kernel,
            &label,
            &[
                io.inputs[0].0.clone(),
                Bind::f32s(&codes, blocks * quads * v.rows * 4),
                Bind::f32s(&bias_buf, n),
                io.output.0.clone(),
            ],
            &params,
            [blocks as u32, item_groups as u32, 1],
        ));
    }
    Ok(out)
}

/// Rows `r0 .. r0 + n` of `w`'s codes as `[row block][quad][rows_per_block][4 words]`,
/// zero words past each row and in the last block's missing rows.
fn upload_blocks(
    io: &StepIo,
    label: &str,
    w: &Pow2Weights,
    r0: usize,
    n: usize,
    rows_per_block: usize,
    quads: usize,
) -> wgpu::Buffer {
    let words = block_layout(n, rows_per_block, quads, |r| w.code_row(r0 + r));
    super::pow2::upload_u32(io.ctx, &format!("{label} codes"), &words)
}

/// The words of `n` rows (`row(r)`, at most `4 * quads` words each) laid out as
/// `[block][quad][rows_per_block][4]`, zero-filled.
fn block_layout<'a>(
    n: usize,
    rows_per_block: usize,
    quads: usize,
    row: impl Fn(usize) -> &'a [u32],
) -> Vec<u32> {
    let blocks = n.div_ceil(rows_per_block);
    let mut words = vec![0u32; (blocks * quads * rows_per_block * 4).max(1)];
    for r in 0..n {
        let (b, rr) = (r / rows_per_block, r % rows_per_block);
        for (t, &cw) in row(r).iter().enumerate() {
            words[((b * quads + t / 4) * rows_per_block + rr) * 4 + t % 4] = cw;
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated variant is valid WGSL (naga parses and validates it).
    #[test]
    fn generated_sources_validate() {
        for bits in 2..=5 {
            for items in 1..=MAX_ITEMS {
                for (rows, prefetch) in [(4, 1), (8, 1), (8, 2), (16, 3)] {
                    for aligned in [false, true] {
                        let v = Variant {
                            bits,
                            items,
                            rows,
                            aligned,
                            prefetch,
                        };
                        let src = lut_source(v);
                        let module = naga::front::wgsl::parse_str(&src)
                            .unwrap_or_else(|e| panic!("{v:?}: {}", e.emit_to_string(&src)));
                        naga::valid::Validator::new(
                            naga::valid::ValidationFlags::all(),
                            naga::valid::Capabilities::empty(),
                        )
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{v:?}: {e:?}"));
                    }
                }
            }
        }
    }

    /// 5 rows of 6 words in blocks of 4 rows and 2 quads: row 4 is row 0 of block 1,
    /// its word 5 lane 1 of quad 1: ((1 * 2 + 1) * 4 + 0) * 4 + 1 = 49.
    #[test]
    fn block_layout_places_every_word() {
        let rows: Vec<Vec<u32>> = (0..5)
            .map(|r| (0..6).map(|t| 100 * r + t + 1).collect())
            .collect();
        let words = block_layout(5, 4, 2, |r| &rows[r]);
        assert_eq!(words.len(), 64, "2 blocks x 2 quads x 4 rows x 4 words");
        assert_eq!(words[49], 406);
        assert_eq!(words[0], 1, "row 0 word 0");
        assert_eq!(words[4], 101, "row 1 word 0");
        assert_eq!(words[16 + 1], 6, "row 0 word 5: quad 1, lane 1");
        assert_eq!(words[16 + 2], 0, "row 0 has no word 6");
        assert_eq!(words[32 + 4], 0, "block 1 has no row 5");
        assert_eq!(words.iter().filter(|&&w| w != 0).count(), 30);
    }
}
