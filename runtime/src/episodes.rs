//! Meta-learning: episodes of few-shot tasks, each learned online by the circuit's own
//! plasticity, and an outer loop that steps the meta-params by Adam on the query loss.
//!
//! Input: an [`Engine`] whose program carries forward-mode tangents of every meta-param θ_r
//! (the compiler's `tangent` pass adds `__meta_loss` and its tangents ∂loss/∂θ_r, see
//! [`MetaBuffers`]), its [`State`], a classification [`Dataset`], and a [`MetaConfig`].
//! Output: an [`Outcome`] whose test numbers are the mean query loss and accuracy of
//! `eval_episodes` tasks drawn from the test split with the learned θ frozen; per-episode
//! metrics (`meta_loss`, `meta_acc`, every θ) in `metrics.jsonl`/`.csv`; plots
//! `meta_accuracy.png` and `meta_params.png`; a checkpoint after episodes.
//!
//! One episode e (the notes' Algorithm 1, meta-learned-plasticity.md):
//! 1. a task: `ways` distinct classes and, per class, `shots` support and `queries` query
//!    samples, drawn without replacement from the split by a ChaCha8 stream of (seed, e); the
//!    labels stay the dataset's own class indices (argmax over all outputs, as the paper);
//! 2. a fresh network: every persistent buffer except the meta-params and the fixed pathways
//!    not marked `resample` is re-drawn from its init law with a seed of (seed, e), tangents
//!    included (a fresh draw does not depend on θ: its tangent is 0);
//! 3. the inner loop: the support set in a shuffled order, `batch` samples per step, through
//!    the `Train` entry (plasticity on; tangents carried along);
//! 4. the query set through the `Eval` entry: the meta-loss is the mean of `__meta_loss` and
//!    its gradient the mean of the tangents, plus `meta_l1 · sign(θ)` (sign(0) = 0, as
//!    PyTorch's `abs`); Adam (β₁ 0.9, β₂ 0.999, ε 1e-8) on the host, in f64.
//!
//! Invariants: an episode is a pure function of (θ, seed, e): with θ fixed, running it twice
//! gives the same numbers, which is what makes the forward-mode gradient checkable against
//! finite differences; the random draws of the compiled code are keyed by the global step,
//! which a checkpoint saves, so a resumed run continues bit for bit.

use crate::abi::StepCtx;
use crate::data::{Dataset, Split, TaskKind};
use crate::driver::{self, Engine, EntryKind, Outcome, Position, RunConfig, RunError, RunInfo};
use crate::metrics::MetricsLog;
use crate::npz::{NpyArray, NpyData};
use crate::plot::{self, Series};
use crate::progress::Progress;
use crate::state::State;
use miette::Diagnostic;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;
use thiserror::Error;

/// How episodes are drawn and the meta-params stepped (the experiment's meta keys).
#[derive(Clone, Debug, PartialEq)]
pub struct MetaConfig {
    /// Meta-training episodes, one Adam step each.
    pub episodes: usize,
    /// Classes per task.
    pub ways: usize,
    /// Support (training) samples per class.
    pub shots: usize,
    /// Query samples per class.
    pub queries: usize,
    /// Adam learning rate.
    pub meta_lr: f64,
    /// Weight of the L1 penalty λ Σ|θ_r|.
    pub meta_l1: f64,
    /// Tasks from the test split scored after meta-training, θ frozen.
    pub eval_episodes: usize,
    /// Evolution strategies: antithetic pairs per episode (0: the exact forward-mode gradient).
    pub es_population: usize,
    /// Standard deviation of the perturbations of θ.
    pub es_sigma: f64,
}

impl Default for MetaConfig {
    /// The paper's settings (5-way, 50 + 10 samples per class, Adam 1e-3, no L1), exact
    /// gradients; `episodes` 0 until the experiment sets it.
    fn default() -> Self {
        MetaConfig {
            episodes: 0,
            ways: 5,
            shots: 50,
            queries: 10,
            meta_lr: 1e-3,
            meta_l1: 0.0,
            eval_episodes: 20,
            es_population: 0,
            es_sigma: 1e-3,
        }
    }
}

/// One meta-param: its buffer and the buffer of the meta-loss tangent ∂loss/∂θ (none when
/// the program was compiled for evolution strategies).
#[derive(Clone, Debug)]
pub struct MetaParam {
    pub name: String,
    pub buf: usize,
    pub loss_tangent: Option<usize>,
}

/// The buffers a meta-learning run reads and resets.
#[derive(Clone, Debug)]
pub struct MetaBuffers {
    pub params: Vec<MetaParam>,
    /// The per-sample meta-loss `__meta_loss`.
    pub loss: usize,
    /// Buffers re-drawn at the start of every episode.
    pub reset: Vec<usize>,
}

#[derive(Debug, Error, Diagnostic)]
pub enum MetaError {
    #[error("meta-learning needs a classification dataset; `{name}` is a regression task")]
    #[diagnostic(code(circ::meta::not_classification), help("use a dataset with classes, e.g. `data = mnist`"))]
    NotClassification { name: String },
    #[error(
        "a {ways}-way task needs {ways} classes with {need} samples each in the {split} split of `{name}`; it has {have} such classes"
    )]
    #[diagnostic(code(circ::meta::too_few_samples), help("lower `ways`, `shots` or `queries`"))]
    TooFewSamples { name: String, split: &'static str, ways: usize, need: usize, have: usize },
    #[error("meta-learning needs data: the experiment has `data = none`")]
    #[diagnostic(code(circ::meta::no_data), help("name a classification dataset, e.g. `data = mnist`"))]
    NoData,
    #[error("this circuit was not compiled for meta-learning (no `__meta_loss` tangents)")]
    #[diagnostic(code(circ::meta::not_compiled), help("declare `episodes = N` in the experiment block"))]
    NotCompiled,
    #[error("checkpoint {path} has no valid meta-learning state: {why}")]
    #[diagnostic(code(circ::meta::checkpoint), help("resume with the checkpoint of the same meta-learning run"))]
    Checkpoint { path: String, why: String },
}

/// Adam on the meta-params, in f64 on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub t: u64,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    pub fn new(n: usize) -> Adam {
        Adam { t: 0, m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// One step of θ against the gradient `g` with learning rate `lr`.
    pub fn step(&mut self, theta: &mut [f64], g: &[f64], lr: f64) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t as i32);
        let c2 = 1.0 - Self::B2.powi(self.t as i32);
        for i in 0..theta.len() {
            self.m[i] = Self::B1 * self.m[i] + (1.0 - Self::B1) * g[i];
            self.v[i] = Self::B2 * self.v[i] + (1.0 - Self::B2) * g[i] * g[i];
            theta[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + Self::EPS);
        }
    }

    /// As one array for checkpoints: [t, m..., v...].
    fn to_array(&self) -> NpyArray {
        let mut v = vec![self.t as f64];
        v.extend(&self.m);
        v.extend(&self.v);
        NpyArray::f64("__adam", &[v.len()], v)
    }

    fn from_array(a: &NpyArray, n: usize) -> Option<Adam> {
        let NpyData::F64(v) = &a.data else { return None };
        (v.len() == 1 + 2 * n && v[0] >= 0.0).then(|| Adam { t: v[0] as u64, m: v[1..1 + n].to_vec(), v: v[1 + n..].to_vec() })
    }
}

/// A few-shot task: sample indices into a split.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// The support set, in the order the inner loop sees it.
    pub support: Vec<usize>,
    /// The query set.
    pub queries: Vec<usize>,
}

/// Stream tags, so the task, network and order draws of one episode are independent.
const TASK_STREAM: u64 = 0x7A5C;
/// The perturbations of evolution strategies.
const ES_STREAM: u64 = 0xE5E5;
/// Meta-test episodes are numbered from here, far from any training episode.
const TEST_EPISODES: u64 = 1 << 40;

fn episode_rng(seed: u64, episode: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ episode.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ stream)
}

/// The seed the network of episode `episode` is drawn from.
pub fn episode_seed(seed: u64, episode: u64) -> u64 {
    seed ^ episode.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// Samples indices by class for a split (classes with fewer than `need` samples are not
/// eligible).
fn by_class(split: &Split, classes: usize) -> Vec<Vec<usize>> {
    let mut v = vec![Vec::new(); classes];
    for (i, &l) in split.labels.iter().enumerate() {
        if let Some(c) = v.get_mut(l as usize) {
            c.push(i);
        }
    }
    v
}

/// Draws the task of an episode.
pub fn draw_task(classes: &[Vec<usize>], cfg: &MetaConfig, seed: u64, episode: u64) -> Task {
    let mut rng = episode_rng(seed, episode, TASK_STREAM);
    let need = cfg.shots + cfg.queries;
    let mut eligible: Vec<usize> = (0..classes.len()).filter(|&c| classes[c].len() >= need).collect();
    eligible.shuffle(&mut rng);
    let mut support = Vec::with_capacity(cfg.ways * cfg.shots);
    let mut queries = Vec::with_capacity(cfg.ways * cfg.queries);
    for &c in eligible.iter().take(cfg.ways) {
        let picked: Vec<usize> = classes[c].choose_multiple(&mut rng, need).copied().collect();
        support.extend_from_slice(&picked[..cfg.shots]);
        queries.extend_from_slice(&picked[cfg.shots..]);
    }
    support.shuffle(&mut rng);
    Task { support, queries }
}

/// What one episode measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeResult {
    /// Mean query loss (without the L1 penalty).
    pub loss: f64,
    /// Query accuracy.
    pub acc: f64,
    /// ∂loss/∂θ_r, the mean of the tangents over the query samples (without the penalty); zeros
    /// without tangents.
    pub grad: Vec<f64>,
    /// Inner-loop steps taken.
    pub steps: u64,
}

/// Runs one episode with the meta-params currently in `state`: fresh network, inner loop on
/// the support set, query loss and its gradient. `ctx.step` is the global step counter at the
/// start; it is advanced by the inner steps.
#[allow(clippy::too_many_arguments)]
pub fn run_episode(
    engine: &mut dyn Engine,
    state: &mut State,
    info: &RunInfo,
    mb: &MetaBuffers,
    data: &Dataset,
    split: &Split,
    task: &Task,
    net_seed: u64,
    batch: usize,
    eval_batch: usize,
    ctx: &mut StepCtx,
) -> Result<EpisodeResult, RunError> {
    let (input, target, readout) = match (info.input, info.target, info.readout) {
        (Some(i), Some(t), Some(r)) => (i, t, r),
        _ => return Err(RunError::Meta(MetaError::NotCompiled)),
    };
    for &b in &mb.reset {
        state.reinit(b, net_seed);
    }
    driver::run_entry(engine, EntryKind::Init, state, batch, ctx)?;
    let mut steps = 0;
    for idx in task.support.chunks(batch) {
        driver::fill(state, input, Some(target), split, data, idx);
        driver::run_entry(engine, EntryKind::Train, state, idx.len(), ctx)?;
        ctx.step += 1;
        steps += 1;
    }
    let n = task.queries.len().max(1) as f64;
    let (mut loss, mut correct) = (0.0, 0.0);
    let mut grad = vec![0.0; mb.params.len()];
    for idx in task.queries.chunks(eval_batch) {
        driver::fill(state, input, Some(target), split, data, idx);
        driver::run_entry(engine, EntryKind::Eval, state, idx.len(), ctx)?;
        // Accuracy from the readout; the loss the tangents differentiate is `__meta_loss`.
        let (_, c) = driver::score(state, readout, split, data, idx, driver::Loss::CrossEntropy);
        loss += (0..idx.len()).map(|row| state.at(mb.loss, row)).sum::<f64>();
        correct += c;
        for (g, p) in grad.iter_mut().zip(&mb.params) {
            if let Some(t) = p.loss_tangent {
                *g += (0..idx.len()).map(|row| state.at(t, row)).sum::<f64>();
            }
        }
    }
    for g in &mut grad {
        *g /= n;
    }
    Ok(EpisodeResult { loss: loss / n, acc: correct / n, grad, steps })
}

/// The evolution-strategies estimate of ∂loss/∂θ on one task: for k = 1..P, ε_k ~ N(0, I)
/// from a stream of (seed, episode, k), the same episode (task, network, random draws) run at
/// θ ± σ ε_k, and g = Σ_k (L⁺_k − L⁻_k) ε_k / (2 σ P) (antithetic sampling with common random
/// numbers). Every evaluation starts from the step counter `start`; the state is left as the
/// last evaluation's. A perturbation whose inner loop diverges is an error, as in training.
#[allow(clippy::too_many_arguments)]
pub fn es_gradient(
    engine: &mut dyn Engine,
    state: &mut State,
    info: &RunInfo,
    mb: &MetaBuffers,
    data: &Dataset,
    task: &Task,
    cfg: &RunConfig,
    meta: &MetaConfig,
    theta: &[f64],
    episode: u64,
    start: StepCtx,
    batch: usize,
    eval_batch: usize,
) -> Result<Vec<f64>, RunError> {
    let n = theta.len();
    let mut g = vec![0.0; n];
    let mut rng = episode_rng(cfg.seed, episode, ES_STREAM);
    for _ in 0..meta.es_population {
        let eps: Vec<f64> = (0..n).map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng)).collect();
        let mut loss = [0.0; 2];
        for (l, sgn) in loss.iter_mut().zip([1.0, -1.0]) {
            let t: Vec<f64> = theta.iter().zip(&eps).map(|(t, e)| t + sgn * meta.es_sigma * e).collect();
            write_theta(state, mb, &t);
            let mut ctx = start;
            let r = run_episode(
                engine,
                state,
                info,
                mb,
                data,
                &data.train,
                task,
                episode_seed(cfg.seed, episode),
                batch,
                eval_batch,
                &mut ctx,
            )?;
            if !r.loss.is_finite() {
                return Err(RunError::NonFinite {
                    what: "the meta-loss of a perturbed θ".into(),
                    value: format!("{}", r.loss),
                    step: ctx.step,
                    origin: format!(" in episode {}", episode + 1),
                    kept: String::new(),
                });
            }
            *l = r.loss;
        }
        for (gi, e) in g.iter_mut().zip(&eps) {
            *gi += (loss[0] - loss[1]) * e / (2.0 * meta.es_sigma * meta.es_population as f64);
        }
    }
    write_theta(state, mb, theta);
    Ok(g)
}

/// The meta-params as the state holds them.
pub fn read_theta(state: &State, mb: &MetaBuffers) -> Vec<f64> {
    mb.params.iter().map(|p| state.at(p.buf, 0)).collect()
}

/// Writes the meta-params into the state.
pub fn write_theta(state: &mut State, mb: &MetaBuffers, theta: &[f64]) {
    for (p, &t) in mb.params.iter().zip(theta) {
        state.set_f64(p.buf, &[t]);
    }
}

/// Checks the dataset can supply the tasks; returns the sample indices by class.
fn classes_of(data: &Dataset, split: &Split, which: &'static str, cfg: &MetaConfig) -> Result<Vec<Vec<usize>>, MetaError> {
    let by = by_class(split, data.target_dim);
    let need = cfg.shots + cfg.queries;
    let have = by.iter().filter(|c| c.len() >= need).count();
    if have < cfg.ways {
        return Err(MetaError::TooFewSamples { name: data.name.clone(), split: which, ways: cfg.ways, need, have });
    }
    Ok(by)
}

/// Meta-trains: `episodes` episodes from the train split, then `eval_episodes` from the test
/// split with θ frozen.
pub fn meta_train(
    engine: &mut dyn Engine,
    state: &mut State,
    info: &RunInfo,
    data: Option<&Dataset>,
    cfg: &RunConfig,
    meta: &MetaConfig,
) -> Result<Outcome, RunError> {
    let mb = info.meta.as_ref().ok_or(RunError::Meta(MetaError::NotCompiled))?;
    let data = data.ok_or(RunError::Meta(MetaError::NoData))?;
    if data.kind != TaskKind::Classification {
        return Err(RunError::Meta(MetaError::NotClassification { name: data.name.clone() }));
    }
    let train_classes = classes_of(data, &data.train, "train", meta)?;
    let test_classes = classes_of(data, &data.test, "test", meta)?;
    let batch = cfg.batch.clamp(1, state.max_batch);
    let eval_batch = cfg.eval_batch.clamp(1, state.max_batch);
    let mut metrics = match &cfg.out {
        Some(d) => MetricsLog::new(d)?,
        None => MetricsLog::in_memory(),
    };
    let mut pos = Position::default();
    let mut theta = read_theta(state, mb);
    let mut adam = Adam::new(theta.len());
    if let Some(ck) = &cfg.resume {
        let (p, extra) = driver::load_checkpoint(ck, state)?;
        pos = p;
        let bad = |why: &str| RunError::Meta(MetaError::Checkpoint { path: ck.display().to_string(), why: why.into() });
        let a = extra.iter().find(|a| a.name == "__adam").ok_or_else(|| bad("no `__adam` array"))?;
        adam = Adam::from_array(a, theta.len()).ok_or_else(|| bad("`__adam` has the wrong size"))?;
        // θ in f64 (the state may hold it in f32, and the host steps it in f64).
        theta = match extra.iter().find(|a| a.name == "__theta").map(|a| &a.data) {
            Some(NpyData::F64(v)) if v.len() == theta.len() => v.clone(),
            _ => return Err(bad("no valid `__theta` array")),
        };
        if let Some(d) = &cfg.out {
            metrics = driver::load_metrics(d)?;
        }
    }
    let mut ctx = StepCtx { seed: cfg.seed, step: pos.global, iter: 0 };
    let mut progress = Progress::new(&info.circuit, (meta.episodes + meta.eval_episodes) as u64, cfg.quiet);
    progress.inc(pos.epoch as u64);
    let mut train_seconds = 0.0;
    let mut recent: Vec<(f64, f64)> = Vec::new();
    let mut last_monitors: Vec<(String, f64)> = Vec::new();
    let mut last_saved = Instant::now();
    let mut stopped = false;
    let mut interrupted = false;
    while pos.epoch < meta.episodes {
        let e = pos.epoch as u64;
        let t0 = Instant::now();
        let task = draw_task(&train_classes, meta, cfg.seed, e);
        write_theta(state, mb, &theta);
        let r = run_episode(engine, state, info, mb, data, &data.train, &task, episode_seed(cfg.seed, e), batch, eval_batch, &mut ctx)
            .and_then(|r| {
                if cfg.check_finite {
                    driver::check_finite(state, info, batch, ctx.step)?;
                }
                if r.loss.is_finite() && r.grad.iter().all(|g| g.is_finite()) {
                    Ok(r)
                } else {
                    Err(RunError::NonFinite {
                        what: "the meta-loss or its gradient".into(),
                        value: format!("{} (gradient {:?})", r.loss, r.grad),
                        step: ctx.step,
                        origin: format!(" in episode {}", e + 1),
                        kept: String::new(),
                    })
                }
            });
        let r = match r {
            Ok(r) => r,
            Err(err) => {
                // Keep the trajectory up to the failure for the user to look at.
                metrics.flush()?;
                return Err(err);
            }
        };
        let grad = if meta.es_population > 0 {
            let start = StepCtx { step: pos.global, ..ctx };
            let est = es_gradient(engine, state, info, mb, data, &task, cfg, meta, &theta, e, start, batch, eval_batch);
            match est {
                Ok(g) => g,
                Err(err) => {
                    metrics.flush()?;
                    return Err(err);
                }
            }
        } else {
            r.grad.clone()
        };
        let g: Vec<f64> = grad.iter().zip(&theta).map(|(g, t)| g + meta.meta_l1 * sign(*t)).collect();
        adam.step(&mut theta, &g, meta.meta_lr);
        write_theta(state, mb, &theta);
        train_seconds += t0.elapsed().as_secs_f64();
        pos.global = ctx.step;
        pos.epoch += 1;
        recent.push((r.loss, r.acc));
        let mut vals: Vec<(&str, f64)> = vec![("meta_loss", r.loss), ("meta_acc", r.acc)];
        vals.extend(mb.params.iter().zip(&theta).map(|(p, t)| (p.name.as_str(), *t)));
        if !info.monitors.is_empty() {
            last_monitors = driver::run_monitors(engine, state, info, batch, &ctx)?;
            vals.extend(last_monitors.iter().filter(|(_, v)| !v.is_nan()).map(|(n, v)| (n.as_str(), *v)));
        }
        metrics.record(pos.global, pos.epoch as u64, &vals)?;
        progress.inc(1);
        progress.set_message(format!("meta loss {:.3} acc {:.3}", r.loss, r.acc));
        let last = pos.epoch == meta.episodes;
        if pos.epoch % 10 == 0 || last {
            let th: String = mb.params.iter().zip(&theta).map(|(p, t)| format!(" {}={t:.3e}", p.name)).collect();
            progress.println(&format!("episode {}: query loss {:.4} acc {:.4};{th}", pos.epoch, r.loss, r.acc));
        }
        interrupted = cfg.stop_requested() && !last;
        if (interrupted || cfg.max_steps.is_some_and(|m| pos.global >= m)) && !last {
            stopped = true;
            break;
        }
        if let Some(d) = &cfg.out {
            if last_saved.elapsed().as_secs_f64() >= 30.0 || last {
                metrics.flush()?;
                driver::save_checkpoint(&d.join("checkpoint.npz"), state, pos, meta_arrays(&adam, &theta))?;
                last_saved = Instant::now();
            }
        }
    }
    if stopped {
        if let Some(d) = &cfg.out {
            metrics.flush()?;
            driver::save_checkpoint(&d.join("checkpoint.npz"), state, pos, meta_arrays(&adam, &theta))?;
        }
    }
    // Meta-test: tasks from the held-out split, θ frozen. The state is left as the last
    // episode's network, and the checkpoint above already holds it.
    let mut test = (f64::NAN, f64::NAN);
    if !stopped && meta.eval_episodes > 0 {
        let (mut l, mut a) = (0.0, 0.0);
        let mut tctx = StepCtx { seed: cfg.seed, step: 0, iter: 0 };
        for k in 0..meta.eval_episodes as u64 {
            let e = TEST_EPISODES + k;
            let task = draw_task(&test_classes, meta, cfg.seed, e);
            write_theta(state, mb, &theta);
            let r = run_episode(engine, state, info, mb, data, &data.test, &task, episode_seed(cfg.seed, e), batch, eval_batch, &mut tctx)?;
            l += r.loss;
            a += r.acc;
            progress.inc(1);
        }
        let n = meta.eval_episodes as f64;
        test = (l / n, a / n);
        metrics.record(pos.global, pos.epoch as u64, &[("test_loss", test.0), ("test_acc", test.1), ("train_seconds", train_seconds)])?;
        progress
            .println(&format!("meta-test, {} episodes on the test split: query loss {:.4} acc {:.4}", meta.eval_episodes, test.0, test.1));
    }
    progress.finish();
    if let Some(d) = &cfg.out {
        metrics.flush()?;
        write_meta_plots(d, &metrics, mb)?;
    }
    // Training numbers: the mean over the last (up to) 20 episodes.
    let tail = &recent[recent.len().saturating_sub(20)..];
    let k = tail.len().max(1) as f64;
    let train = if tail.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (tail.iter().map(|x| x.0).sum::<f64>() / k, tail.iter().map(|x| x.1).sum::<f64>() / k)
    };
    let mut monitors: Vec<(String, f64)> = mb.params.iter().zip(&theta).map(|(p, t)| (p.name.clone(), *t)).collect();
    monitors.extend(last_monitors.into_iter().filter(|(_, v)| !v.is_nan()));
    Ok(Outcome {
        test_acc: test.1,
        test_loss: test.0,
        train_acc: train.1,
        train_loss: train.0,
        train_seconds,
        steps: pos.global,
        epochs_done: pos.epoch,
        monitors,
        metrics,
        interrupted,
    })
}

/// The outer loop's own state for a checkpoint: Adam's moments and θ in f64.
fn meta_arrays(adam: &Adam, theta: &[f64]) -> Vec<NpyArray> {
    vec![adam.to_array(), NpyArray::f64("__theta", &[theta.len()], theta.to_vec())]
}

/// sign(x) with sign(0) = 0: the subgradient of |x| PyTorch uses.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Moving average over a window of `w` points (the paper smooths its curves with 11).
fn moving_average(pts: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    (0..pts.len())
        .map(|i| {
            let lo = i.saturating_sub(w / 2);
            let hi = (i + w / 2 + 1).min(pts.len());
            let s = &pts[lo..hi];
            (pts[i].0, s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64)
        })
        .collect()
}

fn write_meta_plots(dir: &Path, metrics: &MetricsLog, mb: &MetaBuffers) -> Result<(), RunError> {
    let werr = |p: &Path, e: String| RunError::Write { path: p.display().to_string(), why: e };
    let by_episode = |name: &str| -> Vec<(f64, f64)> {
        let Some(col) = metrics.columns().iter().position(|c| c == name) else { return Vec::new() };
        metrics.rows().iter().filter_map(|r| Some((r.epoch as f64, r.values.get(col).copied().flatten()?))).collect()
    };
    let acc = by_episode("meta_acc");
    let p = dir.join("meta_accuracy.png");
    plot::line_plot(
        &p,
        "query accuracy per episode",
        "episode",
        "accuracy",
        &[Series::new("episode", acc.clone()), Series::new("moving average (11)", moving_average(&acc, 11))],
    )
    .map_err(|e| werr(&p, e.to_string()))?;
    let p = dir.join("meta_params.png");
    let series: Vec<Series> = mb.params.iter().map(|m| Series::new(m.name.clone(), by_episode(&m.name))).collect();
    plot::line_plot(&p, "meta-parameters", "episode", "value", &series).map_err(|e| werr(&p, e.to_string()))?;
    Ok(())
}
