//! SVG plots of benchmark results (plotters, SVG backend only: no fonts are loaded, text
//! is written as SVG `<text>` and laid out by the viewer).

use super::model::{LayerTiming, Roof};
use super::sweep::{SweepKind, SweepPoint};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    /// The SVG file being written.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

fn err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError {
        path: path.to_path_buf(),
        message,
    }
}

/// Colours for series, cycled.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Per-layer roofline chart: each layer at its arithmetic intensity (dense-equivalent
/// FLOPs per byte moved, x, log) and achieved GFLOP/s (y, log), under the roof
/// `min(peak FMA, intensity x peak bandwidth)`. Conv, fc and other layers get their own
/// colour. Layers that took no measurable time are left out.
pub fn roofline_svg(
    path: &Path,
    title: &str,
    roof: Roof,
    layers: &[LayerTiming],
) -> Result<(), PlotError> {
    let e = err(path);
    let pts: Vec<(&LayerTiming, f64, f64)> = layers
        .iter()
        .filter(|l| l.ms > 0.0 && l.flops > 0 && l.bytes > 0)
        .map(|l| (l, l.flops as f64 / l.bytes as f64, l.gflops.max(1e-6)))
        .collect();
    let ridge = roof.gflops / roof.gbps;
    let (mut x0, mut x1) = (ridge / 10.0, ridge * 10.0);
    let (mut y0, mut y1) = (roof.gflops / 1e3, roof.gflops * 2.0);
    for &(_, x, y) in &pts {
        x0 = x0.min(x / 2.0);
        x1 = x1.max(x * 2.0);
        y0 = y0.min(y / 2.0);
        y1 = y1.max(y * 2.0);
    }
    let root = SVGBackend::new(path, (820, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity, FLOP per byte (dense-equivalent FLOPs)")
        .y_desc("achieved GFLOP/s")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    let steps = 64;
    let roof_line = (0..=steps).map(|i| {
        let x = x0 * (x1 / x0).powf(i as f64 / steps as f64);
        (x, (x * roof.gbps).min(roof.gflops))
    });
    chart
        .draw_series(LineSeries::new(roof_line, BLACK.stroke_width(2)))
        .map_err(|x| e(x.to_string()))?
        .label(format!(
            "roof: {:.1} GFLOP/s, {:.2} GB/s",
            roof.gflops, roof.gbps
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (i, op) in ["Conv", "Linear", "other"].iter().enumerate() {
        let colour = PALETTE[i];
        let of_op: Vec<(f64, f64)> = pts
            .iter()
            .filter(|(l, _, _)| match *op {
                "other" => l.op != "Conv" && l.op != "Linear",
                op => l.op == op,
            })
            .map(|&(_, x, y)| (x, y))
            .collect();
        if of_op.is_empty() {
            continue;
        }
        chart
            .draw_series(
                of_op
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.mix(0.8).filled())),
            )
            .map_err(|x| e(x.to_string()))?
            .label(format!("{op} layers"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Speed-up over the dense model (y) against the swept parameter (x), one line per
/// device and batch size, with the break-even line at 1.
pub fn sweep_svg(
    path: &Path,
    title: &str,
    kind: SweepKind,
    points: &[SweepPoint],
) -> Result<(), PlotError> {
    let e = err(path);
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points {
        let key = format!(
            "{} batch {}",
            short_device(&p.comparison.device),
            p.comparison.batch
        );
        let xy = (p.value, p.comparison.speedup);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(xy),
            None => series.push((key, vec![xy])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let xs = points.iter().map(|p| p.value);
    let (x0, x1) = (
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    );
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        let pad = (x1 - x0) * 0.05;
        (x0 - pad, x1 + pad)
    } else {
        (0.0, 1.0)
    };
    let y1 = points
        .iter()
        .map(|p| p.comparison.speedup)
        .fold(1.5f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (820, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(kind.parameter())
        .y_desc("speed-up over dense (p50 latency ratio)")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(LineSeries::new(
            vec![(x0, 1.0), (x1, 1.0)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(|x| e(x.to_string()))?
        .label("dense (1x)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    for (i, (key, xy)) in series.into_iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(xy.clone(), colour.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(key)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(xy.into_iter().map(|p| Circle::new(p, 4, colour.filled())))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)` -> `llvmpipe`: legends stay short.
pub fn short_device(device: &str) -> String {
    device
        .split(" (")
        .next()
        .unwrap_or(device)
        .trim()
        .to_string()
}

/// A file-name-safe slug: lowercase ASCII letters, digits and `-`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::Comparison;

    #[test]
    fn roofline_and_sweep_write_svg() {
        let dir = std::env::temp_dir().join(format!("cnnpack-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let layer = |name: &str, op: &str, flops: u64, bytes: u64, ms: f64| LayerTiming {
            name: name.into(),
            op: op.into(),
            encoding: "dense".into(),
            kernel: None,
            ms,
            flops,
            bytes,
            gflops: flops as f64 / ms / 1e6,
            gbps: bytes as f64 / ms / 1e6,
            roof_fraction: None,
            bound: None,
        };
        let roof = Roof {
            gflops: 50.0,
            gbps: 5.0,
        };
        let p = dir.join("roof.svg");
        roofline_svg(
            &p,
            "test roofline",
            roof,
            &[
                layer("c1", "Conv", 1_000_000_000, 10_000_000, 40.0),
                layer("fc", "Linear", 10_000_000, 20_000_000, 5.0),
                layer("pool", "MaxPool", 1000, 4000, 0.0),
            ],
        )
        .expect("roofline plot");
        let svg = std::fs::read_to_string(&p).expect("svg written");
        assert!(svg.starts_with("<svg") && svg.contains("test roofline"));
        assert_eq!(
            svg.matches("<circle").count(),
            2 + 2,
            "2 layers + 2 legend marks"
        );

        let point = |value: f64, batch: usize, speedup: f64| SweepPoint {
            kind: SweepKind::Sketch,
            value,
            comparison: Comparison {
                device: "cpu".into(),
                batch,
                base_p50_ms: speedup,
                p50_ms: 1.0,
                speedup,
                base_weight_bytes: 32,
                weight_bytes: value as u64,
                bytes_ratio: value / 32.0,
                conv_speedup: 1.0,
                fc_speedup: 1.0,
                layers: vec![],
            },
        };
        let p = dir.join("sweep.svg");
        sweep_svg(
            &p,
            "sketch sweep",
            SweepKind::Sketch,
            &[point(2.0, 1, 3.0), point(1.0, 1, 4.0), point(1.0, 8, 1.2)],
        )
        .expect("sweep plot");
        let svg = std::fs::read_to_string(&p).expect("svg written");
        assert!(svg.contains("cpu batch 1") && svg.contains("cpu batch 8"));
        assert!(svg.contains("bases m"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn slugs_and_short_names() {
        assert_eq!(
            short_device("llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"),
            "llvmpipe"
        );
        assert_eq!(slug("llvmpipe (LLVM 15.0.6)"), "llvmpipe-llvm-15-0-6");
    }
}
