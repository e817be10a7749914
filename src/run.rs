//! `circ run`: compile a circuit, load its data, train, evaluate, write outputs.

use crate::cli::{overrides, print_diags, EngineArg, RunArgs};
use circ_compiler::codegen;
use circ_compiler::diag::{render, Diagnostic};
use circ_compiler::frontend;
use circ_compiler::pipeline::{self, EngineKind};
use circ_runtime::driver::{self, RunConfig};
use circ_runtime::state::{bytes_needed, history_bytes, State};
use circ_runtime::{catalog, metrics, resources};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Prints a runtime error (a miette diagnostic without source) and returns exit code 1.
fn fail(e: &dyn miette::Diagnostic) -> i32 {
    let handler = if crate::cli::color() {
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode())
    } else {
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
    };
    let mut out = String::new();
    let _ = handler.render_report(&mut out, e);
    eprint!("{out}");
    1
}

pub fn run(a: RunArgs) -> i32 {
    let mut ov = match overrides(&a.set) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if a.no_shuffle {
        ov.push(circ_compiler::resolve::Override { name: "shuffle".into(), value: circ_compiler::hir::Value::Int(0).into() });
    }
    let t0 = Instant::now();
    let fe = match frontend::load_file(&a.file, &ov) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    print_diags(&fe.diags, &fe.sources);
    let Some(c) = fe.ok() else { return 1 };
    let x = &c.experiment;
    let epochs = a.epochs.unwrap_or(x.epochs);
    let batch = a.batch.unwrap_or(x.batch).max(1);
    let seed = a.seed.unwrap_or(x.seed);
    let eval_batch = x.eval_batch.max(1);
    let Some((data_name, data_span)) = x.data.clone() else {
        let d = Diagnostic::error("circ::experiment::no_data", x.span, "the experiment names no data")
            .label("no `data = ...`")
            .help(format!("add `data = NAME`; datasets: {}", catalog::names().join(", ")));
        eprint!("{}", render(&[d], &fe.sources, crate::cli::color()));
        return 1;
    };
    let program = match pipeline::lower(c, batch) {
        Ok(p) => p,
        Err(d) => {
            print_diags(&d, &fe.sources);
            return 1;
        }
    };
    let info = pipeline::run_info(&program, &fe.sources);
    let origins = program.origins.clone();
    let precision = program.precision;
    let specs = program.buffers.clone();
    let max_batch = batch.max(eval_batch);
    let max = match a.max_memory.as_deref().map(resources::parse_size).transpose() {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let (need, history) = (bytes_needed(&specs, max_batch, precision), history_bytes(&specs, max_batch, precision));
    if let Err(e) = resources::check(need, history, max) {
        return fail(&e);
    }
    let kind = match a.engine {
        EngineArg::Jit => EngineKind::Jit,
        EngineArg::Interp => EngineKind::Interp,
    };
    let mut opts = codegen::Options::from_env();
    opts.bounds_check |= a.jit_bounds_check;
    let mut engine = match pipeline::engine_with(program, kind, opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let data = if data_name == "none" {
        None
    } else {
        match catalog::load(&data_name, a.data_dir.as_deref(), seed) {
            Ok(d) => Some(d),
            Err(e @ catalog::CatalogError::Unknown { .. }) => {
                let d = Diagnostic::error("circ::data::unknown", data_span, e.to_string())
                    .label("unknown dataset")
                    .help(format!("datasets: none, {}", catalog::names().join(", ")));
                eprint!("{}", render(&[d], &fe.sources, crate::cli::color()));
                return 1;
            }
            Err(e) => return fail(&e),
        }
    };
    let (check_every, check_finite) = match a.check_finite.as_str() {
        "off" => (0, false),
        "epoch" => (0, true),
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => (n, true),
            _ => {
                eprintln!("error: --check-finite takes a number of steps (> 0), `epoch` or `off`, not `{n}`");
                return 2;
            }
        },
    };
    // Ctrl-C (SIGINT) or SIGTERM: finish the step, write the checkpoint, exit 130. A second
    // signal while the first is pending exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop));
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let mut state = State::new(&specs, max_batch, precision, seed);
    let cfg = RunConfig {
        epochs,
        batch,
        eval_batch,
        seed,
        shuffle: x.shuffle,
        limit: a.limit.or(x.limit),
        loss: pipeline::loss(c),
        out: Some(a.out.clone().unwrap_or_else(|| std::path::PathBuf::from("runs").join(&c.name))),
        monitor_every: a.monitor_every.or(x.monitor_every).unwrap_or(0),
        check_every,
        check_finite,
        quiet: a.json,
        resume: a.resume.clone(),
        max_steps: a.max_steps,
        steps: x.steps.unwrap_or(1),
        meta: c.experiment.meta.clone(),
        stop: Some(stop),
    };
    let cfg = RunConfig {
        monitor_every: if cfg.monitor_every == 0 { default_monitor_every(data.as_ref(), &cfg) } else { cfg.monitor_every },
        ..cfg
    };
    if !a.json {
        let what = match &data {
            Some(d) => format!("{} ({} train / {} test)", d.name, cfg.limit.map(|l| l.min(d.train.n)).unwrap_or(d.train.n), d.test.n),
            None => format!("no data ({} steps per epoch)", cfg.steps),
        };
        let engine_name = match kind {
            EngineKind::Jit if opts.bounds_check => "JIT (bounds-checked)",
            EngineKind::Jit => "JIT",
            EngineKind::Interp => "interpreter",
        };
        let schedule = match &cfg.meta {
            Some(m) => format!(
                "{} episodes of {}-way tasks ({} support + {} query samples per class), meta-test {} episodes",
                m.episodes, m.ways, m.shots, m.queries, m.eval_episodes
            ),
            None => format!("{epochs} epoch(s)"),
        };
        eprintln!("{}: compiled in {compile_ms:.1} ms; {engine_name} on {what}, batch {batch}, {schedule}, seed {seed}", c.name);
    }
    let outcome = driver::train(engine.as_mut(), &mut state, &info, data.as_ref(), &cfg);
    let out = match outcome {
        Ok(o) => o,
        // A NaN/Inf points at the equation that produced it, in the source.
        Err(driver::RunError::NonFinite { what, value, step, kept, .. }) if origins.iter().any(|o| format!("`{}`", o.what) == what) => {
            let o = origins.iter().rev().find(|o| format!("`{}`", o.what) == what).expect("checked");
            let d = Diagnostic::error("circ::run::non_finite", o.span, format!("{what} became {value} at step {step}"))
                .label("this equation produced it")
                .help(format!("lower the learning rate, or guard the division, log or exp that overflows{kept}"));
            eprint!("{}", render(&[d], &fe.sources, crate::cli::color()));
            return 1;
        }
        Err(e) => return fail(&e),
    };
    if out.interrupted {
        let ck = cfg.out.as_ref().map(|d| d.join("checkpoint.npz"));
        match &ck {
            Some(ck) => eprintln!(
                "{}: interrupted after {} steps; checkpoint in {}; continue with `circ run {} --resume {} --out {}`",
                c.name,
                out.steps,
                ck.display(),
                a.file.display(),
                ck.display(),
                cfg.out.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            ),
            None => eprintln!("{}: interrupted after {} steps", c.name, out.steps),
        }
        return 130;
    }
    let mut fields: Vec<(&str, serde_json::Value)> = vec![
        ("circuit", c.name.clone().into()),
        ("test_acc", out.test_acc.into()),
        ("test_loss", out.test_loss.into()),
        ("train_acc", out.train_acc.into()),
        ("train_loss", out.train_loss.into()),
        ("train_seconds", out.train_seconds.into()),
        ("compile_ms", compile_ms.into()),
        ("steps", out.steps.into()),
        ("epochs", out.epochs_done.into()),
        ("seed", seed.into()),
        ("batch", batch.into()),
    ];
    for (n, v) in &out.monitors {
        fields.push((n.as_str(), (*v).into()));
    }
    if a.json {
        outln!("{}", metrics::final_json_line(&fields));
    } else {
        let mons: String = out.monitors.iter().map(|(n, v)| format!(", {n} {v:.3}")).collect();
        let test = if cfg.meta.is_some() { "meta-test query" } else { "test" };
        outln!(
            "{}: {test} accuracy {:.4}, {test} loss {:.4} after {} steps ({:.2} s training){mons}",
            c.name,
            out.test_acc,
            out.test_loss,
            out.steps,
            out.train_seconds
        );
        if let Some(d) = &cfg.out {
            outln!("metrics, plots and checkpoint in {}", d.display());
        }
    }
    0
}

/// About 20 monitor records per epoch.
fn default_monitor_every(data: Option<&circ_runtime::data::Dataset>, cfg: &RunConfig) -> usize {
    let steps = match data {
        Some(d) => cfg.limit.map(|l| l.min(d.train.n)).unwrap_or(d.train.n).div_ceil(cfg.batch.max(1)),
        None => cfg.steps.max(1),
    };
    (steps / 20).max(1)
}
