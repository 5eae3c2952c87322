//! `asyncloader`: generate data sets, benchmark the loader against
//! `std::fs::read` baselines (see docs/bench.md), and say what this machine
//! can do for it (`asyncloader info`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::bench::{self, Method};
use cli::datagen::{self, Dist, Spec};

#[derive(Parser)]
#[command(
    name = "asyncloader",
    version,
    about = "io_uring file loader: benchmarks, data sets and a probe of this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load every file under DIR with each method and compare (see docs/bench.md).
    Bench(BenchArgs),
    /// Write a deterministic synthetic data set into DIR.
    Gen(GenArgs),
    /// Say what this machine can do for the loader: io_uring (and why not),
    /// the opcodes it needs, the backend Auto picks, and for each PATH the
    /// file system, O_DIRECT and the block device's queue.
    Info(InfoArgs),
}

#[derive(clap::Args)]
struct InfoArgs {
    /// Files or directories where data will be loaded from.
    paths: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Directory to load (recursively). Without it, a default data set is
    /// generated once under $ASYNCLOADER_CACHE (or $XDG_CACHE_HOME/asyncloader,
    /// or ~/.cache/asyncloader) and reused.
    dir: Option<PathBuf>,
    /// Only files whose name ends in EXT (e.g. .JPEG).
    #[arg(long)]
    ext: Option<String>,
    /// asyncloader worker threads / processes.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Requests each worker keeps outstanding (and entries it owns); 0 =
    /// auto: about 1 MiB of the data set's files per worker when warm (8 to
    /// 64: buffers that stay in the CPU's cache), 64 with --cold or --direct.
    #[arg(long, default_value_t = 0)]
    queue_depth: u32,
    /// Loader submits a batch once this many requests wait (0 = auto: with
    /// the workers driving their loads, ~1 MiB of files, 8 to the workers'
    /// io_uring window; 8 with loader threads) ...
    #[arg(long, default_value_t = 0)]
    dispatch_n: u32,
    /// ... or after this many loader passes without a new request.
    #[arg(long, default_value_t = 16)]
    idle_iters: u32,
    /// Loader threads, one io_uring each (0 = one per core).
    #[arg(long, default_value_t = 0)]
    loader_threads: u32,
    /// Files in flight per loader thread, or per worker with `--drive
    /// worker` (0 = engine default: 32, 128 direct).
    #[arg(long, default_value_t = 0)]
    ring_window: u32,
    /// Who loads: auto (the engine's choice: the workers when there is one
    /// per core), loader (loader threads / process), worker (each worker
    /// in its own thread).
    #[arg(long, default_value = "auto", value_parser = parse_drive)]
    drive: asyncloader::Drive,
    /// Memory all buffers of one loader may take (e.g. 512M); each entry's
    /// buffer is this / (workers x queue_depth), at most 1 GiB, and larger
    /// files are left out of every row. Default: a quarter of the memory
    /// available (MemAvailable, or the cgroup's limit).
    #[arg(long, value_parser = datagen::parse_size)]
    memory_budget: Option<u64>,
    /// Threads of the std::fs::read pool row (0 = 2 x cores).
    #[arg(long, default_value_t = 0)]
    pool_threads: usize,
    /// Add O_DIRECT rows of the asyncloader methods.
    #[arg(long)]
    direct: bool,
    /// Drop the page cache before each row (root only; says so otherwise).
    #[arg(long)]
    cold: bool,
    /// Print the figures as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Files in the default data set; with DIR, load only the first N
    /// (1..=10,000,000).
    #[arg(long, value_parser = datagen::parse_files)]
    files: Option<usize>,
    /// Size distribution of the default data set: imagenet, small, uniform:LO-HI.
    #[arg(long, default_value = "small")]
    dist: Dist,
    /// Seed of the default data set.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rows to run, comma-separated (default: seq,pool,threads,process, plus
    /// the -direct rows with --direct).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<Method>>,
    /// Run every row this many times (interleaved) and report the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Skip the unmeasured pass that warms the page cache before warm rows.
    #[arg(long)]
    no_warmup: bool,
    /// Never draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Directory to write (created if needed).
    dir: PathBuf,
    /// Number of files (1..=10,000,000).
    #[arg(long, default_value = "20000", value_parser = datagen::parse_files)]
    files: usize,
    /// Size distribution: imagenet (log-normal, median 110 KiB, 4 KiB..2 MiB,
    /// 100 class dirs), small (4..16 KiB), uniform:LO-HI (e.g. uniform:1K-64K;
    /// HI at most 1 GiB, the largest file asyncloader loads).
    #[arg(long, default_value = "imagenet")]
    dist: Dist,
    /// Seed: the same seed writes identical files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Never draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info(a) => ExitCode::from(cli::info::run(&a.paths, a.json)),
        Cmd::Gen(a) => {
            let spec = Spec {
                dist: a.dist,
                files: a.files,
                seed: a.seed,
            };
            // Up front, before a byte is written: a set that cannot fit.
            if let Err(e) = datagen::check_space(&a.dir, spec.total_bytes()) {
                eprintln!("asyncloader gen: {e}");
                return ExitCode::from(2);
            }
            match datagen::generate(&a.dir, &spec, !a.no_progress) {
                Ok(s) => {
                    eprintln!(
                        "wrote {} files, {:.1} MB ({} seed {}) to {}",
                        s.files,
                        s.bytes as f64 / 1e6,
                        spec.dist,
                        spec.seed,
                        a.dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("asyncloader gen: {}: {e}", a.dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Bench(a) => {
            let o = bench::Opts {
                dir: a.dir,
                ext: a.ext,
                workers: a.workers,
                queue_depth: a.queue_depth,
                queue_depth_auto: false,
                dispatch_n: a.dispatch_n,
                idle_iters: a.idle_iters,
                loader_threads: a.loader_threads,
                ring_window: a.ring_window,
                drive: a.drive,
                pool_threads: a.pool_threads,
                memory_budget: a.memory_budget,
                direct: a.direct,
                cold: a.cold,
                json: a.json,
                files: a.files,
                dist: a.dist,
                seed: a.seed,
                methods: a.methods,
                repeat: a.repeat,
                warmup: !a.no_warmup,
                progress: !a.no_progress,
            };
            match bench::run(o) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("asyncloader bench: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn parse_drive(s: &str) -> Result<asyncloader::Drive, String> {
    asyncloader::Drive::from_name(s).ok_or_else(|| format!("{s:?} is not auto, loader or worker"))
}
