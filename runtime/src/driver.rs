//! The experiment driver: epochs of batched training, held-out evaluation, monitors,
//! metrics, plots and checkpoints.
//!
//! Input: an [`Engine`] (the JIT or the interpreter), its [`State`], a [`RunInfo`] saying which
//! buffers hold inputs, targets and the readout, a [`Dataset`] and a [`RunConfig`].
//! Output: a [`Outcome`] (final test accuracy and loss, timings, monitors) and, with an output
//! directory, `metrics.jsonl`, `metrics.csv`, plots and `checkpoint.npz`.
//! Invariants: the run is a pure function of (program, data, config, seed): the sample order of
//! epoch `e` comes from a ChaCha8 stream seeded by (seed, e), the step counter drives the
//! compiled code's random draws, and monitors only read state, so a run with or without
//! monitors, or resumed from a checkpoint, produces the same numbers. Files are written
//! atomically.

use crate::abi::{BoundsFault, StepCtx};
use crate::data::{Dataset, Split, TaskKind};
use crate::episodes::{MetaBuffers, MetaConfig, MetaError};
use crate::metrics::{MetricsError, MetricsLog};
use crate::npz::{self, NpyArray, NpyData, NpzError};
use crate::plot::{self, Series};
use crate::progress::Progress;
use crate::state::{BufKind, Precision, Rows, State};
use crate::stats::{self, Stat};
use miette::Diagnostic;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// Which compiled entry to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Recompute derived buffers (effective weights) from state.
    Init,
    /// One training step on the batch in the input/target buffers.
    Train,
    /// Inference on the batch in the input buffer.
    Eval,
    /// Fill the monitor buffers.
    Monitor,
}

/// Something that runs compiled circuit entries: the JIT or the reference interpreter.
pub trait Engine {
    /// Runs `entry` on the first `nb` batch rows of `state`.
    fn run(&mut self, entry: EntryKind, state: &mut State, nb: usize, ctx: &StepCtx);
    /// The first out-of-bounds access a run caught since the last call (only the JIT in its
    /// bounds-check mode catches any).
    fn take_fault(&mut self) -> Option<BoundsFault> {
        None
    }
}

/// Runs an entry; a bounds fault the engine caught becomes an error.
pub fn run_entry(engine: &mut dyn Engine, entry: EntryKind, state: &mut State, nb: usize, ctx: &StepCtx) -> Result<(), RunError> {
    engine.run(entry, state, nb, ctx);
    match engine.take_fault() {
        Some(f) => Err(RunError::Bounds(f)),
        None => Ok(()),
    }
}

/// What the driver needs to know about a compiled circuit.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub circuit: String,
    pub input: Option<usize>,
    pub target: Option<usize>,
    pub readout: Option<usize>,
    pub monitors: Vec<(String, Stat)>,
    /// For each buffer a statement writes: (buffer, "h.a", source location) for NaN reports.
    pub origins: Vec<(usize, String, String)>,
    /// The meta-params and tangents of a program compiled for meta-learning.
    pub meta: Option<MetaBuffers>,
}

/// How predictions are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Softmax cross-entropy of the readout against the one-hot target.
    CrossEntropy,
    /// Mean squared error of the readout against the target.
    Mse,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub epochs: usize,
    pub batch: usize,
    pub eval_batch: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Use only the first N training samples.
    pub limit: Option<usize>,
    pub loss: Loss,
    /// Where metrics, plots and the checkpoint go.
    pub out: Option<PathBuf>,
    /// Record monitors every N steps (0: once per epoch).
    pub monitor_every: usize,
    /// Check state for NaN/Inf every N steps (0: only at epoch ends).
    pub check_every: usize,
    /// Check for NaN/Inf at all (`--check-finite off` turns it off).
    pub check_finite: bool,
    /// No progress output.
    pub quiet: bool,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// Stop after this many steps in total (for tests of interruption and resume).
    pub max_steps: Option<u64>,
    /// Steps per epoch when there is no dataset.
    pub steps: usize,
    /// Meta-learning: episodes instead of epochs (see [`crate::episodes`]).
    pub meta: Option<MetaConfig>,
    /// Set by a signal handler (SIGINT, SIGTERM): stop after the current step (episode), write
    /// the checkpoint, and return with [`Outcome::interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
}

impl RunConfig {
    /// Whether a stop was requested.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            epochs: 1,
            batch: 1,
            eval_batch: 1000,
            seed: 0,
            shuffle: true,
            limit: None,
            loss: Loss::CrossEntropy,
            out: None,
            monitor_every: 0,
            check_every: 100,
            check_finite: true,
            quiet: true,
            resume: None,
            max_steps: None,
            steps: 1,
            meta: None,
            stop: None,
        }
    }
}

/// Results of a run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub test_acc: f64,
    pub test_loss: f64,
    pub train_acc: f64,
    pub train_loss: f64,
    pub train_seconds: f64,
    pub steps: u64,
    pub epochs_done: usize,
    pub monitors: Vec<(String, f64)>,
    pub metrics: MetricsLog,
    /// Stopped early by a signal (the checkpoint holds the position to resume from).
    pub interrupted: bool,
}

#[derive(Debug, Error, Diagnostic)]
pub enum RunError {
    #[error("the data has {data} input values per sample but input `{name}` has {circuit}")]
    #[diagnostic(code(circ::run::input_size), help("declare the input with the data's size, e.g. `input x[{data}]`"))]
    InputSize { name: String, data: usize, circuit: usize },
    #[error("the data has {data} target values per sample but target `{name}` has {circuit}")]
    #[diagnostic(code(circ::run::target_size), help("declare the target with the data's size, e.g. `target y[{data}] at o`"))]
    TargetSize { name: String, data: usize, circuit: usize },
    #[error("the circuit has no readout, so it cannot be evaluated")]
    #[diagnostic(code(circ::run::no_readout), help("add `readout = o.a` to the experiment block"))]
    NoReadout,
    #[error("the circuit has no input population, but the experiment feeds data")]
    #[diagnostic(code(circ::run::no_input), help("declare `input x[N]`"))]
    NoInput,
    #[error("{what} became {value} at step {step}{origin}")]
    #[diagnostic(code(circ::run::non_finite), help("lower the learning rate, or guard the division, log or exp that overflows{kept}"))]
    NonFinite { what: String, value: String, step: u64, origin: String, kept: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(#[from] NpzError),
    #[error("checkpoint {path} does not match this circuit: {why}")]
    #[diagnostic(code(circ::run::checkpoint_mismatch), help("resume with the same program and params that wrote the checkpoint"))]
    CheckpointMismatch { path: String, why: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Meta(#[from] MetaError),
    #[error("cannot write {path}: {why}")]
    #[diagnostic(code(circ::run::write), help("check the output directory (`--out DIR`)"))]
    Write { path: String, why: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bounds(#[from] BoundsFault),
}

/// Where training stands; saved in checkpoints.
/// In a meta-learning run `epoch` counts episodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Position {
    pub(crate) epoch: usize,
    /// Steps done within `epoch`.
    pub(crate) step_in_epoch: usize,
    /// Steps done in total.
    pub(crate) global: u64,
    /// Training loss and correct predictions summed over the samples seen so far in `epoch`
    /// (so a resumed run reports the same epoch averages as an uninterrupted one).
    pub(crate) sum_loss: f64,
    pub(crate) sum_correct: f64,
    pub(crate) seen: usize,
}

/// Trains and evaluates a circuit on a dataset.
pub fn train(
    engine: &mut dyn Engine,
    state: &mut State,
    info: &RunInfo,
    data: Option<&Dataset>,
    cfg: &RunConfig,
) -> Result<Outcome, RunError> {
    // With data: the input (and target) buffers must match it, and a readout scores it.
    let io = match data {
        Some(data) => {
            let input = info.input.ok_or(RunError::NoInput)?;
            // Unsupervised circuits (no target) need no readout.
            let readout = match (info.readout, info.target) {
                (Some(r), _) => Some(r),
                (None, None) => None,
                (None, Some(_)) => return Err(RunError::NoReadout),
            };
            if state.specs[input].cols != data.input_dim {
                return Err(RunError::InputSize {
                    name: state.specs[input].name.clone(),
                    data: data.input_dim,
                    circuit: state.specs[input].cols,
                });
            }
            if let Some(t) = info.target {
                if state.specs[t].cols != data.target_dim {
                    return Err(RunError::TargetSize {
                        name: state.specs[t].name.clone(),
                        data: data.target_dim,
                        circuit: state.specs[t].cols,
                    });
                }
            }
            Some((data, input, readout))
        }
        None => None,
    };
    if let Some(meta) = &cfg.meta {
        return crate::episodes::meta_train(engine, state, info, data, cfg, meta);
    }
    let batch = cfg.batch.clamp(1, state.max_batch);
    let eval_batch = cfg.eval_batch.clamp(1, state.max_batch);
    let n_train = match data {
        Some(d) => cfg.limit.map(|l| l.min(d.train.n)).unwrap_or(d.train.n),
        None => cfg.steps.max(1) * batch,
    };
    let steps_per_epoch = n_train.div_ceil(batch);
    let mut metrics = match &cfg.out {
        Some(d) => MetricsLog::new(d)?,
        None => MetricsLog::in_memory(),
    };
    let mut ctx = StepCtx { seed: cfg.seed, step: 0, iter: 0 };
    let mut pos = Position::default();
    if let Some(ck) = &cfg.resume {
        pos = load_checkpoint(ck, state)?.0;
        if let Some(d) = &cfg.out {
            // Continue the metrics of the interrupted run.
            metrics = load_metrics(d)?;
        }
    }
    run_entry(engine, EntryKind::Init, state, batch, &ctx)?;

    let monitor_every = if cfg.monitor_every == 0 { steps_per_epoch.max(1) } else { cfg.monitor_every };
    let total_steps = (cfg.epochs * steps_per_epoch) as u64;
    let mut progress = Progress::new(&info.circuit, total_steps, cfg.quiet);
    progress.inc(pos.global);
    let mut last_saved = Instant::now();
    let mut guard = FiniteGuard { enabled: cfg.check_finite, good: None };
    // The starting state is the first "last good" one.
    guard.check(state, info, batch.min(n_train.max(1)), pos, cfg.out.as_deref())?;
    let mut train_seconds = 0.0;
    let mut last_monitors: Vec<(String, f64)> = Vec::new();
    let mut last_test = (f64::NAN, f64::NAN);
    let mut last_train = (f64::NAN, f64::NAN);
    let mut stopped = false;
    let mut interrupted = false;
    'epochs: while pos.epoch < cfg.epochs {
        let order = epoch_order(n_train, cfg.seed, pos.epoch as u64, cfg.shuffle);
        let t0 = Instant::now();
        while pos.step_in_epoch < steps_per_epoch {
            let lo = pos.step_in_epoch * batch;
            let idx = &order[lo..(lo + batch).min(n_train)];
            ctx.step = pos.global;
            if let Some((data, input, readout)) = io {
                fill(state, input, info.target, &data.train, data, idx);
                run_entry(engine, EntryKind::Train, state, idx.len(), &ctx)?;
                if let Some(readout) = readout {
                    let (l, c) = score(state, readout, &data.train, data, idx, cfg.loss);
                    pos.sum_loss += l;
                    pos.sum_correct += c;
                }
            } else {
                run_entry(engine, EntryKind::Train, state, idx.len(), &ctx)?;
            }
            pos.seen += idx.len();
            pos.step_in_epoch += 1;
            pos.global += 1;
            progress.inc(1);
            if cfg.check_every > 0 && pos.global % cfg.check_every as u64 == 0 {
                guard.check(state, info, idx.len(), pos, cfg.out.as_deref())?;
            }
            if !info.monitors.is_empty() && pos.global % monitor_every as u64 == 0 {
                last_monitors = run_monitors(engine, state, info, idx.len(), &ctx)?;
                // Histograms have no scalar value: they are drawn at the end.
                let vals: Vec<(&str, f64)> = last_monitors
                    .iter()
                    .zip(&info.monitors)
                    .filter(|(_, (_, s))| !matches!(s, Stat::Histogram { .. }))
                    .map(|((n, v), _)| (n.as_str(), *v))
                    .collect();
                metrics.record(pos.global, pos.epoch as u64, &vals)?;
            }
            interrupted = cfg.stop_requested();
            if interrupted || cfg.max_steps.is_some_and(|m| pos.global >= m) {
                stopped = true;
                train_seconds += t0.elapsed().as_secs_f64();
                break 'epochs;
            }
        }
        train_seconds += t0.elapsed().as_secs_f64();
        guard.check(state, info, batch.min(n_train.max(1)), pos, cfg.out.as_deref())?;
        if let Some((data, input, Some(readout))) = io {
            last_train = (pos.sum_loss / pos.seen.max(1) as f64, pos.sum_correct / pos.seen.max(1) as f64);
            last_test = evaluate(engine, state, input, info.target, readout, data, eval_batch, cfg.loss, &ctx)?;
            if data.kind != TaskKind::Classification {
                // Accuracy has no meaning for regression: report it as missing, not 0.
                (last_train.1, last_test.1) = (f64::NAN, f64::NAN);
            }
            metrics.record(
                pos.global,
                pos.epoch as u64 + 1,
                &[
                    ("train_loss", last_train.0),
                    ("train_acc", last_train.1),
                    ("test_loss", last_test.0),
                    ("test_acc", last_test.1),
                    ("train_seconds", train_seconds),
                ],
            )?;
            progress.epoch_end(
                pos.epoch as u64 + 1,
                &format!("train loss {:.4} acc {:.4}, test loss {:.4} acc {:.4}", last_train.0, last_train.1, last_test.0, last_test.1),
            );
        } else {
            metrics.record(pos.global, pos.epoch as u64 + 1, &[("train_seconds", train_seconds)])?;
            let mons: String = last_monitors.iter().map(|(n, v)| format!(" {n} {v:.4}")).collect();
            progress.epoch_end(pos.epoch as u64 + 1, &format!("{} steps{mons}", pos.global));
        }
        pos.epoch += 1;
        pos.step_in_epoch = 0;
        (pos.sum_loss, pos.sum_correct, pos.seen) = (0.0, 0.0, 0);
        // Checkpoint at epoch ends, but not more often than every 30 s of wall time (each is
        // a synced write), and always after the last epoch.
        if let Some(d) = &cfg.out {
            if last_saved.elapsed().as_secs_f64() >= 30.0 || pos.epoch == cfg.epochs {
                metrics.flush()?;
                save_checkpoint(&d.join("checkpoint.npz"), state, pos, Vec::new())?;
                last_saved = Instant::now();
            }
        }
    }
    progress.finish();
    if stopped {
        if let Some(d) = &cfg.out {
            metrics.flush()?;
            save_checkpoint(&d.join("checkpoint.npz"), state, pos, Vec::new())?;
        }
    }
    if let Some(d) = &cfg.out {
        metrics.flush()?;
        write_plots(d, &metrics, &info.monitors, state)?;
    }
    Ok(Outcome {
        test_acc: last_test.1,
        test_loss: last_test.0,
        train_acc: last_train.1,
        train_loss: last_train.0,
        train_seconds,
        steps: pos.global,
        epochs_done: pos.epoch,
        monitors: last_monitors
            .into_iter()
            .zip(&info.monitors)
            .filter(|(_, (_, s))| !matches!(s, Stat::Histogram { .. }))
            .map(|(m, _)| m)
            .collect(),
        metrics,
        interrupted,
    })
}

/// The order of training samples in an epoch.
fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch.wrapping_add(1));
        order.shuffle(&mut rng);
    }
    order
}

/// Copies the samples `idx` into the input and target buffers.
pub(crate) fn fill(state: &mut State, input: usize, target: Option<usize>, split: &Split, data: &Dataset, idx: &[usize]) {
    let d = data.input_dim;
    let mut xs = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        xs.extend_from_slice(&split.x[i * d..(i + 1) * d]);
    }
    state.set_f32(input, &xs);
    if let Some(t) = target {
        let k = data.target_dim;
        let mut ys = Vec::with_capacity(idx.len() * k);
        for &i in idx {
            ys.extend_from_slice(&split.y[i * k..(i + 1) * k]);
        }
        state.set_f32(t, &ys);
    }
}

/// Sum of per-sample losses and number of correct predictions for the samples `idx`.
pub(crate) fn score(state: &State, readout: usize, split: &Split, data: &Dataset, idx: &[usize], loss: Loss) -> (f64, f64) {
    let k = state.specs[readout].cols;
    let tk = data.target_dim;
    let mut l = 0.0;
    let mut correct = 0.0;
    for (row, &i) in idx.iter().enumerate() {
        let out: Vec<f64> = (0..k).map(|j| state.at(readout, row * k + j)).collect();
        let target = &split.y[i * tk..(i + 1) * tk];
        l += match loss {
            Loss::CrossEntropy => {
                let m = out.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + out.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                lse - out.iter().zip(target).map(|(o, t)| o * *t as f64).sum::<f64>()
            }
            Loss::Mse => out.iter().zip(target).map(|(o, t)| (o - *t as f64).powi(2)).sum::<f64>() / k.max(1) as f64,
        };
        if data.kind == TaskKind::Classification {
            let pred = argmax(&out);
            if split.labels.get(i).is_some_and(|&y| y as usize == pred) {
                correct += 1.0;
            }
        }
    }
    (l, correct)
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Mean loss and accuracy on the test split, in batches of `eval_batch`.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    engine: &mut dyn Engine,
    state: &mut State,
    input: usize,
    target: Option<usize>,
    readout: usize,
    data: &Dataset,
    eval_batch: usize,
    loss: Loss,
    ctx: &StepCtx,
) -> Result<(f64, f64), RunError> {
    let n = data.test.n;
    if n == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let mut l = 0.0;
    let mut c = 0.0;
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(eval_batch) {
        fill(state, input, target, &data.test, data, chunk);
        run_entry(engine, EntryKind::Eval, state, chunk.len(), ctx)?;
        let (a, b) = score(state, readout, &data.test, data, chunk, loss);
        l += a;
        c += b;
    }
    Ok((l / n as f64, c / n as f64))
}

/// Runs the monitor entry and computes every monitor's value.
pub fn run_monitors(
    engine: &mut dyn Engine,
    state: &mut State,
    info: &RunInfo,
    nb: usize,
    ctx: &StepCtx,
) -> Result<Vec<(String, f64)>, RunError> {
    run_entry(engine, EntryKind::Monitor, state, nb, ctx)?;
    Ok(info
        .monitors
        .iter()
        .map(|(name, stat)| {
            let v = match stat {
                Stat::Angle { a, b, cols } => stats::mean_row_angle(&state.get(*a)[..nb * cols], &state.get(*b)[..nb * cols], nb, *cols),
                Stat::Mean { buf } => state.get(*buf)[..nb].iter().sum::<f64>() / nb.max(1) as f64,
                Stat::Symmetry { buf, n } => stats::symmetry(&state.get(*buf), *n),
                Stat::SpectralRadius { buf, n } => stats::spectral_radius(&state.get(*buf), *n),
                Stat::EffectiveRank { buf, rows, cols } => stats::effective_rank(&state.get(*buf), *rows, *cols),
                Stat::Histogram { .. } => f64::NAN,
            };
            (name.clone(), v)
        })
        .collect())
}

/// Keeps the last state that passed the NaN/Inf check, so a diverging run can leave it behind.
struct FiniteGuard {
    enabled: bool,
    good: Option<(Snapshot, Position)>,
}

/// Copies of the persistent buffers: (buffer, values).
type Snapshot = Vec<(usize, Vec<f64>)>;

impl FiniteGuard {
    /// Checks the state; on success remembers it (when there is an output directory), on
    /// failure writes the last good state as the checkpoint and returns the error.
    fn check(&mut self, state: &mut State, info: &RunInfo, nb: usize, pos: Position, out: Option<&Path>) -> Result<(), RunError> {
        if !self.enabled {
            return Ok(());
        }
        match check_finite(state, info, nb, pos.global) {
            Ok(()) => {
                if out.is_some() {
                    // Refill the previous copy in place: no allocation per check.
                    let (bufs, at) = self.good.get_or_insert_with(|| {
                        let bufs = (0..state.specs.len()).filter(|&b| state.specs[b].kind.persistent()).map(|b| (b, Vec::new())).collect();
                        (bufs, pos)
                    });
                    for (b, v) in bufs.iter_mut() {
                        state.copy_into(*b, v);
                    }
                    *at = pos;
                }
                Ok(())
            }
            Err(RunError::NonFinite { what, value, step, origin, .. }) => {
                let mut kept = String::new();
                if let (Some(dir), Some((bufs, good_pos))) = (out, &self.good) {
                    for (b, v) in bufs {
                        state.set_f64(*b, v);
                    }
                    let path = dir.join("checkpoint.npz");
                    save_checkpoint(&path, state, *good_pos, Vec::new())?;
                    kept = format!("; the last good state (step {}) is in {}", good_pos.global, path.display());
                }
                Err(RunError::NonFinite { what, value, step, origin, kept })
            }
            Err(e) => Err(e),
        }
    }
}

/// Stops with a clear error when a circuit buffer holds NaN or Inf.
pub(crate) fn check_finite(state: &State, info: &RunInfo, nb: usize, step: u64) -> Result<(), RunError> {
    for (b, spec) in state.specs.iter().enumerate() {
        if matches!(spec.kind, BufKind::Temp | BufKind::Input | BufKind::Target) {
            continue;
        }
        let len = match spec.rows {
            Rows::Batch => nb * spec.cols,
            Rows::Fixed(r) => r * spec.cols,
            Rows::History(t) => t * nb * spec.cols,
        };
        if let Some(i) = state.first_non_finite(b, len) {
            let v = state.at(b, i);
            let origin =
                info.origins.iter().find(|(ob, _, _)| *ob == b).map(|(_, _, loc)| format!(" (computed at {loc})")).unwrap_or_default();
            return Err(RunError::NonFinite { what: format!("`{}`", spec.name), value: format!("{v}"), step, origin, kept: String::new() });
        }
    }
    Ok(())
}

/// Writes every persistent buffer, the training position and `extra` arrays, atomically.
pub(crate) fn save_checkpoint(path: &Path, state: &State, pos: Position, extra: Vec<NpyArray>) -> Result<(), RunError> {
    let mut arrays = Vec::new();
    for (b, spec) in state.specs.iter().enumerate() {
        if !spec.kind.persistent() {
            continue;
        }
        let rows = spec.rows(state.max_batch);
        let shape = [rows, spec.cols];
        arrays.push(match state.precision() {
            Precision::F32 => NpyArray::f32(spec.name.clone(), &shape, state.get(b).into_iter().map(|x| x as f32).collect()),
            Precision::F64 => NpyArray::f64(spec.name.clone(), &shape, state.get(b)),
        });
    }
    arrays.push(NpyArray::i64("__position", &[4], vec![pos.epoch as i64, pos.step_in_epoch as i64, pos.global as i64, pos.seen as i64]));
    arrays.push(NpyArray::f64("__epoch_sums", &[2], vec![pos.sum_loss, pos.sum_correct]));
    arrays.extend(extra);
    npz::write_npz(path, &arrays)?;
    Ok(())
}

/// Restores persistent buffers and the training position from a checkpoint; returns the
/// position and the arrays that are not circuit buffers (names starting with `__`).
pub(crate) fn load_checkpoint(path: &Path, state: &mut State) -> Result<(Position, Vec<NpyArray>), RunError> {
    let arrays = npz::read_npz(path)?;
    let mismatch = |why: String| RunError::CheckpointMismatch { path: path.display().to_string(), why };
    let mut pos = None;
    for a in &arrays {
        if a.name == "__position" {
            if let NpyData::I64(v) = &a.data {
                if v.len() == 4 && v.iter().all(|x| *x >= 0) {
                    pos = Some(Position {
                        epoch: v[0] as usize,
                        step_in_epoch: v[1] as usize,
                        global: v[2] as u64,
                        seen: v[3] as usize,
                        ..Position::default()
                    });
                }
            }
        }
    }
    let mut pos = pos.ok_or_else(|| mismatch("it has no valid training position".into()))?;
    match arrays.iter().find(|a| a.name == "__epoch_sums").map(|a| &a.data) {
        Some(NpyData::F64(v)) if v.len() == 2 => (pos.sum_loss, pos.sum_correct) = (v[0], v[1]),
        _ => return Err(mismatch("it has no valid epoch sums".into())),
    }
    for b in 0..state.specs.len() {
        let spec = state.specs[b].clone();
        if !spec.kind.persistent() {
            continue;
        }
        let a = arrays.iter().find(|a| a.name == spec.name).ok_or_else(|| mismatch(format!("it has no array `{}`", spec.name)))?;
        let want = spec.len(state.max_batch);
        let values: Vec<f64> = match &a.data {
            NpyData::F32(v) => v.iter().map(|x| *x as f64).collect(),
            NpyData::F64(v) => v.clone(),
            _ => return Err(mismatch(format!("array `{}` is not floating point", spec.name))),
        };
        if values.len() != want {
            return Err(mismatch(format!("array `{}` has {} values, the circuit needs {want}", spec.name, values.len())));
        }
        state.set_f64(b, &values);
    }
    Ok((pos, arrays.into_iter().filter(|a| a.name.starts_with("__")).collect()))
}

/// The metrics an interrupted run wrote into `dir` (empty if there are none).
pub(crate) fn load_metrics(dir: &Path) -> Result<MetricsLog, RunError> {
    let mut log = MetricsLog::new(dir)?;
    let path = dir.join(crate::metrics::METRICS_JSONL);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(log) };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| RunError::Write { path: path.display().to_string(), why: format!("cannot read it back: {e}") })?;
        let Some(obj) = v.as_object() else { continue };
        let step = obj.get("step").and_then(|x| x.as_u64()).unwrap_or(0);
        let epoch = obj.get("epoch").and_then(|x| x.as_u64()).unwrap_or(0);
        let vals: Vec<(&str, f64)> =
            obj.iter().filter(|(k, _)| *k != "step" && *k != "epoch").map(|(k, x)| (k.as_str(), x.as_f64().unwrap_or(f64::NAN))).collect();
        log.record(step, epoch, &vals)?;
    }
    Ok(log)
}

/// Learning curves and monitor curves as PNG.
fn write_plots(dir: &Path, metrics: &MetricsLog, monitors: &[(String, Stat)], state: &State) -> Result<(), RunError> {
    let werr = |p: &Path, e: String| RunError::Write { path: p.display().to_string(), why: e };
    let acc = dir.join("accuracy.png");
    let by_epoch = |name: &str| -> Vec<(f64, f64)> {
        metrics
            .rows()
            .iter()
            .filter_map(|r| {
                let col = metrics.columns().iter().position(|c| c == name)?;
                let v = r.values.get(col).copied().flatten()?;
                Some((r.epoch as f64, v))
            })
            .collect()
    };
    plot::line_plot(
        &acc,
        "accuracy",
        "epoch",
        "accuracy",
        &[Series::new("train", by_epoch("train_acc")), Series::new("test", by_epoch("test_acc"))],
    )
    .map_err(|e| werr(&acc, e.to_string()))?;
    let loss = dir.join("loss.png");
    plot::line_plot(
        &loss,
        "loss",
        "epoch",
        "loss",
        &[Series::new("train", by_epoch("train_loss")), Series::new("test", by_epoch("test_loss"))],
    )
    .map_err(|e| werr(&loss, e.to_string()))?;
    for (name, stat) in monitors {
        let p = dir.join(format!("monitor_{name}.png"));
        if let Stat::Histogram { buf, len } = stat {
            let v = state.get(*buf);
            plot::histogram_plot(&p, name, name, &v[..(*len).min(v.len())], 50).map_err(|e| werr(&p, e.to_string()))?;
            continue;
        }
        let pts = metrics.series(name);
        plot::line_plot(&p, name, "step", name, &[Series::new(name.clone(), pts)]).map_err(|e| werr(&p, e.to_string()))?;
    }
    Ok(())
}
