//! The matmul floor: what a decoder step's weight-bearing matmuls alone cost on this
//! machine, at the rate the bundle's own kernels reach. `models/matmul_floor.py` writes
//! one graph per kernel of the step (many copies of the node, each with weights of its own,
//! more bytes than the last-level cache holds) and `floor.json`; this times each graph with
//! the engine's ONNX Runtime and thread count (the median of many warm runs) and sums the
//! per-node times over the step's nodes. A step cannot be faster than its floor without
//! faster kernels; its distance above it is what the rest of the graph costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use musicgen_engine::Runtime;
use serde::{Deserialize, Serialize};

use crate::print_json;

#[derive(clap::Args)]
pub struct FloorArgs {
    /// The kernel graphs and floor.json that `models/matmul_floor.py` wrote for a bundle.
    dir: PathBuf,
    /// Intra-op threads (default: every core, as the decoder runs).
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime library to load instead of searching for one.
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

/// `musicgen floor`: the floor alone, for 2 rows (guidance) and 1, as JSON.
pub fn floor(args: &FloorArgs) -> Result<()> {
    let runtime = Runtime::init(args.ort_library.as_deref())?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    #[derive(Serialize)]
    struct Report {
        matmul_floor: Vec<MatmulFloor>,
    }
    print_json(&Report {
        matmul_floor: measure(runtime, &args.dir, threads, &[2, 1])?,
    })
}

/// Timed runs per kernel graph: at least this many, and at least [`MIN_TIMED`] of runs.
const MIN_RUNS: usize = 30;
const MIN_TIMED: Duration = Duration::from_secs(1);
const MAX_RUNS: usize = 400;
const WARMUP_RUNS: usize = 3;

#[derive(Deserialize)]
struct FloorSpec {
    cache_bytes: u64,
    kernels: Vec<KernelSpec>,
}

#[derive(Deserialize)]
struct KernelSpec {
    name: String,
    graph: String,
    k: usize,
    n: usize,
    count_per_step: usize,
    copies: usize,
    weight_bytes_per_copy: u64,
}

/// The floor for one batch size (guidance rows).
#[derive(Serialize)]
pub struct MatmulFloor {
    pub rows: usize,
    pub threads: usize,
    pub ms_per_step: f64,
    pub steps_per_second: f64,
    /// The last-level cache the kernel graphs were sized past.
    pub cache_bytes: u64,
    pub kernels: Vec<KernelTiming>,
}

#[derive(Serialize)]
pub struct KernelTiming {
    pub name: String,
    pub count_per_step: usize,
    pub copies: usize,
    pub runs: usize,
    /// Median time of one node (a run over every copy, over the copies).
    pub us_per_node: f64,
    pub g_weights_per_second: f64,
    pub weight_gb_per_second: f64,
}

/// Times the kernel graphs in `dir` for each of `rows` with `threads` intra-op threads.
pub fn measure(runtime: &Runtime, dir: &Path, threads: usize, rows: &[usize]) -> Result<Vec<MatmulFloor>> {
    let spec_path = dir.join("floor.json");
    let spec: FloorSpec = serde_json::from_str(
        &std::fs::read_to_string(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    let mut timings: Vec<Vec<KernelTiming>> = rows.iter().map(|_| Vec::new()).collect();
    for kernel in &spec.kernels {
        let path = dir.join(&kernel.graph);
        let mut session = runtime
            .cpu_session(&path, threads)
            .with_context(|| format!("loading {}", path.display()))?;
        for (&m, out) in rows.iter().zip(&mut timings) {
            let (median, runs) = median_run(&mut session, m, kernel.k)
                .with_context(|| format!("running {} with {m} rows", path.display()))?;
            let seconds_per_node = median.as_secs_f64() / kernel.copies as f64;
            let timing = KernelTiming {
                name: kernel.name.clone(),
                count_per_step: kernel.count_per_step,
                copies: kernel.copies,
                runs,
                us_per_node: seconds_per_node * 1e6,
                g_weights_per_second: (kernel.k * kernel.n) as f64 / seconds_per_node / 1e9,
                weight_gb_per_second: kernel.weight_bytes_per_copy as f64 / seconds_per_node / 1e9,
            };
            eprintln!(
                "  floor, {m} rows: {} x{} {:.1} us per node ({:.1} G weights/s, median of {runs})",
                kernel.name, kernel.count_per_step, timing.us_per_node, timing.g_weights_per_second
            );
            out.push(timing);
        }
    }
    Ok(rows
        .iter()
        .zip(timings)
        .map(|(&rows, kernels)| {
            let ms_per_step = kernels
                .iter()
                .map(|k| k.us_per_node * k.count_per_step as f64 / 1000.0)
                .sum::<f64>();
            MatmulFloor {
                rows,
                threads,
                ms_per_step,
                steps_per_second: 1000.0 / ms_per_step,
                cache_bytes: spec.cache_bytes,
                kernels,
            }
        })
        .collect())
}

/// The median wall time of a run over all of the graph's copies with `rows` input rows,
/// and the number of timed runs.
fn median_run(session: &mut ort::session::Session, rows: usize, k: usize) -> Result<(Duration, usize)> {
    // Values in a normal layer's range; the kernels' cost does not depend on them.
    let input: Vec<f32> = (0..rows * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let input = ort::value::Tensor::from_array(([rows, k], input))?;
    for _ in 0..WARMUP_RUNS {
        session.run(ort::inputs!["x" => &input])?;
    }
    let mut times = Vec::with_capacity(MAX_RUNS);
    let started = Instant::now();
    while times.len() < MIN_RUNS || (started.elapsed() < MIN_TIMED && times.len() < MAX_RUNS) {
        let run_started = Instant::now();
        let outputs = session.run(ort::inputs!["x" => &input])?;
        times.push(run_started.elapsed());
        drop(outputs);
    }
    times.sort();
    Ok((times[times.len() / 2], times.len()))
}
