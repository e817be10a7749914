//! Subcommands of `circ`: argument parsing (clap) and dispatch.

use circ_compiler::diag::{render, Diagnostic, Sources};
use circ_compiler::frontend::{self, Frontend};
use circ_compiler::locality;
use circ_compiler::resolve::{parse_override, Override};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "circ", version, about = "A language and compiler for learning circuits")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train and evaluate a circuit as its experiment block says.
    Run(RunArgs),
    /// Download a dataset: `circ data fetch mnist --to DIR`.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// List the standard library, or print one of its files.
    Std { name: Option<String> },
    /// Print a compilation stage: ast, hir, lir, clif or asm.
    Ir {
        file: PathBuf,
        #[arg(long, default_value = "lir")]
        stage: String,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Training batch size to compile for.
        #[arg(long)]
        batch: Option<usize>,
        /// With `--stage clif` or `asm`: the code of the bounds-check debug mode (see `circ run
        /// --jit-bounds-check`).
        #[arg(long)]
        jit_bounds_check: bool,
    },
    /// Parse, resolve and check programs; print the locality of every equation.
    Check {
        /// Program files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the per-equation locality table.
        #[arg(long)]
        report: bool,
        /// Machine-readable output (one JSON object per file).
        #[arg(long)]
        json: bool,
        /// Override a param: NAME=VALUE (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Rewrite programs in the canonical layout (in place; `-` or no file: stdin to stdout).
    Fmt {
        /// Program files.
        files: Vec<PathBuf>,
        /// Write nothing; list the files that would change and exit 1 if any would.
        #[arg(long)]
        check: bool,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.cmd {
        Cmd::Check { files, report, json, set } => check(&files, report, json, &set),
        Cmd::Run(a) => crate::run::run(a),
        Cmd::Ir { file, stage, set, batch, jit_bounds_check } => ir(&file, &stage, &set, batch, jit_bounds_check),
        Cmd::Data { cmd: DataCmd::Fetch { dataset, to, mirror } } => fetch(&dataset, &to, mirror.as_deref()),
        Cmd::Std { name } => std_cmd(name.as_deref()),
        Cmd::Fmt { files, check } => crate::fmt::fmt(&files, check),
    }
}

#[derive(Subcommand)]
enum DataCmd {
    /// Download MNIST or Fashion-MNIST (four IDX files, checked by md5).
    Fetch {
        /// `mnist` or `fashion_mnist`.
        dataset: String,
        /// Destination directory.
        #[arg(long)]
        to: PathBuf,
        /// Base URL of another mirror holding the four .gz files.
        #[arg(long)]
        mirror: Option<String>,
    },
}

fn fetch(dataset: &str, to: &std::path::Path, mirror: Option<&str>) -> i32 {
    let fashion = match dataset {
        "mnist" => false,
        "fashion_mnist" | "fashion-mnist" => true,
        other => {
            eprintln!("error: unknown dataset `{other}`; `circ data fetch` knows mnist and fashion_mnist");
            return 2;
        }
    };
    let mut log = |m: &str| eprintln!("{m}");
    match circ_runtime::fetch::fetch_mnist_with(to, mirror, fashion, &mut log) {
        Ok(()) => {
            eprintln!("{dataset} is in {}; use it with --data-dir {} or CIRC_MNIST_DIR", to.display(), to.display());
            0
        }
        Err(e) => {
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).render_report(&mut out, &e);
            eprint!("{out}");
            1
        }
    }
}

fn std_cmd(name: Option<&str>) -> i32 {
    match name {
        None => {
            for (n, text) in circ_compiler::stdlib::FILES {
                let first = text.lines().find(|l| l.starts_with("//")).unwrap_or("").trim_start_matches('/').trim();
                outln!("{n:24} {first}");
            }
            0
        }
        Some(n) => match circ_compiler::stdlib::get(n).or_else(|| circ_compiler::stdlib::get(&format!("{n}.circ"))) {
            Some(t) => {
                out!("{t}");
                0
            }
            None => {
                eprintln!("error: no standard library file `{n}`; `circ std` lists them");
                1
            }
        },
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    pub file: PathBuf,
    /// Override a param or experiment setting: NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory with the MNIST IDX files (else $CIRC_MNIST_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train on the first N samples only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Present the training samples in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Output directory for metrics, plots and the checkpoint.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one final JSON line on stdout (and no progress).
    #[arg(long)]
    pub json: bool,
    /// Execution engine.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: EngineArg,
    /// Debug mode of the JIT: check every memory access of the compiled code against its
    /// buffer's length and stop with `circ::jit::bounds` on a violation (slower; also on with
    /// CIRC_JIT_BOUNDS_CHECK=1).
    #[arg(long)]
    pub jit_bounds_check: bool,
    /// Continue from a checkpoint written by an earlier run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Record monitors every N steps (default: about 20 times per epoch).
    #[arg(long)]
    pub monitor_every: Option<usize>,
    /// Refuse to run when the circuit needs more memory than this (e.g. 2G, 512M).
    #[arg(long)]
    pub max_memory: Option<String>,
    /// Stop after N training steps (writing a checkpoint), e.g. to test resumption.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// How often every buffer is checked for NaN/Inf: every N steps, `epoch` (at epoch ends
    /// only), or `off`.
    #[arg(long, value_name = "N|epoch|off", default_value = "100")]
    pub check_finite: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Jit,
    Interp,
}

pub fn overrides(set: &[String]) -> Result<Vec<Override>, String> {
    set.iter().map(|s| parse_override(s).map_err(|e| format!("--set {s}: {e}"))).collect()
}

pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn print_diags(diags: &[Diagnostic], sources: &Sources) {
    if !diags.is_empty() {
        eprint!("{}", render(diags, sources, color()));
    }
}

fn check(files: &[PathBuf], report: bool, json: bool, set: &[String]) -> i32 {
    let ov = match overrides(set) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut code = 0;
    for f in files {
        let fe: Frontend = match frontend::load_file(f, &ov) {
            Ok(fe) => fe,
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
                continue;
            }
        };
        if fe.has_errors() {
            code = 1;
        }
        if json {
            outln!("{}", check_json(f, &fe));
            continue;
        }
        print_diags(&fe.diags, &fe.sources);
        if let (Some(c), Some(r)) = (&fe.circuit, &fe.report) {
            if report {
                out!("{}", locality::render_report(c, r, &fe.sources));
            } else if !fe.has_errors() {
                let claim = c.claim.map(|(t, _)| format!(" (claimed {})", t.name())).unwrap_or_default();
                outln!("{}: ok, circuit `{}` is {}{}", f.display(), c.name, r.tier.name(), claim);
            }
        }
    }
    code
}

fn check_json(f: &std::path::Path, fe: &Frontend) -> String {
    let diags: Vec<serde_json::Value> = fe
        .diags
        .iter()
        .map(|d| {
            let (line, col) = fe.sources.line_col(d.span.file, d.span.lo);
            serde_json::json!({
                "code": d.code,
                "severity": if d.is_error() { "error" } else { "warning" },
                "message": d.message,
                "file": fe.sources.file(d.span.file).name,
                "line": line,
                "column": col,
                "span": [d.span.lo, d.span.hi],
                "help": d.help,
            })
        })
        .collect();
    let rows: Vec<serde_json::Value> = match (&fe.circuit, &fe.report) {
        (Some(c), Some(r)) => r
            .rows
            .iter()
            .map(|row| {
                let (line, col) = fe.sources.line_col(row.stmt_span.file, row.stmt_span.lo);
                let _ = c;
                serde_json::json!({
                    "target": row.target,
                    "tier": row.verdict.tier.name(),
                    "reason": row.verdict.reason,
                    "line": line,
                    "column": col,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    serde_json::json!({
        "file": f.display().to_string(),
        "ok": !fe.has_errors(),
        "circuit": fe.circuit.as_ref().map(|c| c.name.clone()),
        "tier": fe.report.as_ref().map(|r| r.tier.name()),
        "claim": fe.circuit.as_ref().and_then(|c| c.claim.map(|(t, _)| t.name())),
        "diagnostics": diags,
        "equations": rows,
    })
    .to_string()
}

fn ir(file: &std::path::Path, stage: &str, set: &[String], batch: Option<usize>, bounds_check: bool) -> i32 {
    let ov = match overrides(set) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if stage == "ast" {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return 1;
            }
        };
        let mut sources = Sources::default();
        let id = sources.add(file.to_string_lossy(), text.as_str());
        return match circ_compiler::syntax::parse(id, &text) {
            Ok(p) => {
                outln!("{p:#?}");
                0
            }
            Err(d) => {
                print_diags(&[d], &sources);
                1
            }
        };
    }
    let fe = match frontend::load_file(file, &ov) {
        Ok(fe) => fe,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    print_diags(&fe.diags, &fe.sources);
    let Some(c) = fe.ok() else { return 1 };
    if stage == "hir" {
        out!("{c}");
        return 0;
    }
    let batch = batch.unwrap_or(c.experiment.batch);
    let p = match circ_compiler::pipeline::lower(c, batch) {
        Ok(p) => p,
        Err(d) => {
            print_diags(&d, &fe.sources);
            return 1;
        }
    };
    match stage {
        "lir" => {
            out!("{p}");
            0
        }
        "clif" | "asm" => {
            match circ_compiler::codegen::compile_with(&p, circ_compiler::codegen::Options { asm: stage == "asm", bounds_check }) {
                Ok(j) => {
                    out!("{}", if stage == "asm" { &j.asm } else { &j.clif });
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        other => {
            eprintln!("error: unknown stage `{other}`; stages: ast, hir, lir, clif, asm");
            2
        }
    }
}
