//! Meta-learning: the forward-mode meta-gradient of the rule-pool circuit
//! (examples/papers/meta_pool.circ, small and in f64) against central finite differences of
//! the same episode, a resumed meta-training run against an uninterrupted one, and an outer
//! loop that improves the query accuracy of a learning rule.

mod common;

use circ_compiler::frontend::{self, Frontend};
use circ_compiler::pipeline::{self, EngineKind};
use circ_compiler::resolve::parse_override;
use circ_runtime::abi::StepCtx;
use circ_runtime::data::{Dataset, Split, TaskKind};
use circ_runtime::driver::{self, Engine, RunConfig, RunInfo};
use circ_runtime::episodes::{self, MetaBuffers, MetaConfig};
use circ_runtime::state::State;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLASSES: usize = 4;
const DIM: usize = 784;

/// Sparse blobs like MNIST digits: per class a random pattern with 15% of the 784 inputs on
/// (shared by both splits); samples jitter it and drop some of its pixels.
fn blobs(per_class: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means: Vec<Vec<f32>> =
        (0..CLASSES).map(|_| (0..DIM).map(|_| if rng.random_bool(0.15) { rng.random_range(0.5..1.0) } else { 0.0 }).collect()).collect();
    let mut split = |n: usize| {
        let mut s = Split { n: n * CLASSES, x: Vec::new(), y: Vec::new(), labels: Vec::new() };
        for i in 0..n * CLASSES {
            let c = i % CLASSES;
            s.x.extend(means[c].iter().map(|&m| {
                if m > 0.0 && rng.random_bool(0.8) {
                    (m + 0.2 * rng.random_range(-1.0f32..1.0)).min(1.0)
                } else {
                    0.0
                }
            }));
            s.y.extend((0..CLASSES).map(|k| if k == c { 1.0 } else { 0.0 }));
            s.labels.push(c as u32);
        }
        s
    };
    let train = split(per_class);
    let test = split(per_class);
    Dataset { name: "blobs".into(), kind: TaskKind::Classification, input_dim: DIM, target_dim: CLASSES, train, test }
}

/// The rule pool at a small size, with every θ_r non-zero so every term is differentiated.
fn pool(f64_precision: bool, episodes: usize) -> Frontend {
    let path = common::root().join("examples/papers/meta_pool.circ");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if f64_precision {
        text = text.replace("\nparam L: int = 3", "\nprecision f64\nparam L: int = 3");
    }
    for r in 2..=10 {
        let v = if r % 2 == 0 { 2e-4 } else { -3e-4 };
        text = text.replace(&format!("meta theta{r} = 0\n"), &format!("meta theta{r} = {v}\n"));
    }
    let fe = load(&text, &[&format!("episodes={episodes}"), "meta_lr=0.0005"]);
    assert!(fe.ok().is_some(), "{:?}", fe.diags);
    fe
}

/// meta_pool.circ's text at a small size, on 3-way tasks of 4 + 3 samples per class.
fn load(text: &str, sets: &[&str]) -> Frontend {
    let path = common::root().join("examples/papers/meta_pool.circ");
    let classes = format!("classes={CLASSES}");
    let mut all = vec!["n1=8", "n2=6", "ways=3", "shots=4", "queries=3", "eval_episodes=2", classes.as_str()];
    all.extend_from_slice(sets);
    let ov: Vec<_> = all.iter().map(|s| parse_override(s).unwrap()).collect();
    frontend::load_source(&path.display().to_string(), text, &ov)
}

struct Run {
    engine: Box<dyn Engine>,
    state: State,
    info: RunInfo,
    meta: MetaConfig,
}

fn build(fe: &Frontend, seed: u64) -> Run {
    let c = fe.ok().unwrap();
    let p = pipeline::lower(c, 1).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let state = State::new(&p.buffers, 64, p.precision, seed);
    let engine = pipeline::engine(p, EngineKind::Jit).unwrap();
    Run { engine, state, info, meta: c.experiment.meta.clone().unwrap() }
}

/// Query loss and gradient of episode 0 with the given θ.
fn episode(run: &mut Run, data: &Dataset, theta: &[f64]) -> (f64, Vec<f64>) {
    let mb: MetaBuffers = run.info.meta.clone().unwrap();
    let classes: Vec<Vec<usize>> =
        (0..CLASSES).map(|c| (0..data.train.n).filter(|&i| data.train.labels[i] as usize == c).collect()).collect();
    let task = episodes::draw_task(&classes, &run.meta, 7, 0);
    episodes::write_theta(&mut run.state, &mb, theta);
    let mut ctx = StepCtx { seed: 7, step: 0, iter: 0 };
    let r = episodes::run_episode(
        run.engine.as_mut(),
        &mut run.state,
        &run.info,
        &mb,
        data,
        &data.train,
        &task,
        episodes::episode_seed(7, 0),
        1,
        16,
        &mut ctx,
    )
    .unwrap();
    assert_eq!(r.steps as usize, task.support.len());
    (r.loss, r.grad)
}

#[test]
fn forward_mode_meta_gradient_matches_finite_differences() {
    let data = blobs(20, 1);
    let fe = pool(true, 1);
    let mut run = build(&fe, 3);
    let mb = run.info.meta.clone().unwrap();
    assert_eq!(mb.params.len(), 10);
    let theta = episodes::read_theta(&run.state, &mb);
    let (loss, grad) = episode(&mut run, &data, &theta);
    assert!(loss.is_finite() && loss > 0.0, "query loss {loss}");
    // The same episode twice gives the same numbers (the premise of the comparison).
    assert_eq!(episode(&mut run, &data, &theta), (loss, grad.clone()));
    let mut worst: f64 = 0.0;
    for r in 0..theta.len() {
        // A fourth-order central difference: truncation O(h⁴), round-off ~1e-16·L/h.
        let h = 3e-6;
        let at = |run: &mut Run, k: f64| {
            let mut t = theta.clone();
            t[r] += k * h;
            episode(run, &data, &t).0
        };
        let fd = (-at(&mut run, 2.0) + 8.0 * at(&mut run, 1.0) - 8.0 * at(&mut run, -1.0) + at(&mut run, -2.0)) / (12.0 * h);
        let err = (grad[r] - fd).abs() / fd.abs().max(grad[r].abs()).max(1e-3);
        worst = worst.max(err);
        assert!(err < 1e-6, "{}: forward mode {} vs finite differences {fd} (relative error {err:.2e})", mb.params[r].name, grad[r]);
    }
    eprintln!("worst relative error over the 10 meta-params: {worst:.2e}");
}

fn meta_cfg(run: &Run, out: Option<std::path::PathBuf>, max_steps: Option<u64>, resume: Option<std::path::PathBuf>) -> RunConfig {
    RunConfig {
        batch: 1,
        eval_batch: 16,
        seed: 5,
        quiet: true,
        out,
        max_steps,
        resume,
        meta: Some(run.meta.clone()),
        ..RunConfig::default()
    }
}

#[test]
fn resumed_meta_training_continues_bit_for_bit() {
    let data = blobs(20, 2);
    let fe = pool(false, 4);
    let dir = std::env::temp_dir().join(format!("circ-meta-resume-{}", std::process::id()));
    let (a, b) = (dir.join("whole"), dir.join("parts"));
    let _ = std::fs::remove_dir_all(&dir);

    let mut whole = build(&fe, 5);
    let cfg = meta_cfg(&whole, Some(a.clone()), None, None);
    let full = driver::train(whole.engine.as_mut(), &mut whole.state, &whole.info, Some(&data), &cfg).unwrap();

    // Stop after the second episode (12 support samples each), then resume in a fresh process state.
    let mut first = build(&fe, 5);
    let cfg = meta_cfg(&first, Some(b.clone()), Some(24), None);
    let part = driver::train(first.engine.as_mut(), &mut first.state, &first.info, Some(&data), &cfg).unwrap();
    assert_eq!(part.epochs_done, 2);
    let mut second = build(&fe, 5);
    let cfg = meta_cfg(&second, Some(b.clone()), None, Some(b.join("checkpoint.npz")));
    let rest = driver::train(second.engine.as_mut(), &mut second.state, &second.info, Some(&data), &cfg).unwrap();

    assert_eq!(rest.epochs_done, 4);
    assert_eq!(without_timing(&full.metrics.to_jsonl()), without_timing(&rest.metrics.to_jsonl()));
    assert_eq!((full.test_acc.to_bits(), full.test_loss.to_bits()), (rest.test_acc.to_bits(), rest.test_loss.to_bits()));
    for name in ["theta1", "theta3", "theta10"] {
        let (x, y) = (whole.state.find(name).unwrap(), second.state.find(name).unwrap());
        assert_eq!(whole.state.get(x), second.state.get(y), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metric lines without the wall-clock column (the only one that may differ).
fn without_timing(jsonl: &str) -> Vec<serde_json::Value> {
    jsonl
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("train_seconds");
            v
        })
        .collect()
}

#[test]
fn the_outer_loop_raises_a_too_small_learning_rate() {
    // F^pseudo alone (`pool = 1`) from θ_1 = 1e-4, too small to learn 12 samples: the
    // outer loop raises it and the query loss falls.
    let data = blobs(20, 3);
    let path = common::root().join("examples/papers/meta_pool.circ");
    let text = std::fs::read_to_string(&path).unwrap().replace("meta theta1 = 0.001\n", "meta theta1 = 0.0001\n");
    let fe = load(&text, &["pool=1", "episodes=30", "eval_episodes=4", "meta_lr=0.003"]);
    assert_eq!(fe.ok().map(|c| c.metas.len()), Some(1), "{:?}", fe.diags);
    let mut run = build(&fe, 9);
    let cfg = meta_cfg(&run, None, None, None);
    let out = driver::train(run.engine.as_mut(), &mut run.state, &run.info, Some(&data), &cfg).unwrap();
    let theta1 = out.monitors.iter().find(|(n, _)| n == "theta1").unwrap().1;
    let losses = out.metrics.series("meta_loss");
    let mean = |s: &[(f64, f64)]| s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64;
    let (early, late) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    assert!(theta1 > 1e-3, "θ_1 went from 1e-4 to {theta1}");
    assert!(late < early, "meta-loss of the first five episodes {early}, of the last five {late}");
}

#[test]
fn evolution_strategies_estimate_the_forward_mode_gradient() {
    // F^pseudo (one meta-param), the same task and network: the antithetic ES estimate with
    // 64 pairs against the exact forward-mode derivative of the same query loss.
    let data = blobs(20, 4);
    let path = common::root().join("examples/papers/meta_pool.circ");
    let text = std::fs::read_to_string(&path).unwrap();
    let exact = load(&text, &["pool=1", "episodes=1"]);
    let es = load(&text, &["pool=1", "episodes=1", "es_population=64", "es_sigma=0.00001"]);
    let mut fwd = build(&exact, 3);
    let theta = episodes::read_theta(&fwd.state, fwd.info.meta.as_ref().unwrap());
    let (_, grad) = episode(&mut fwd, &data, &theta);

    let mut run = build(&es, 3);
    let mb = run.info.meta.clone().unwrap();
    assert!(mb.params.iter().all(|p| p.loss_tangent.is_none()), "evolution strategies compile no tangents");
    let classes: Vec<Vec<usize>> =
        (0..CLASSES).map(|c| (0..data.train.n).filter(|&i| data.train.labels[i] as usize == c).collect()).collect();
    let task = episodes::draw_task(&classes, &run.meta, 7, 0);
    let cfg = RunConfig { seed: 7, meta: Some(run.meta.clone()), ..RunConfig::default() };
    let start = StepCtx { seed: 7, step: 0, iter: 0 };
    let est =
        episodes::es_gradient(run.engine.as_mut(), &mut run.state, &run.info, &mb, &data, &task, &cfg, &run.meta, &theta, 0, start, 1, 16)
            .unwrap();
    let rel = (est[0] - grad[0]).abs() / grad[0].abs();
    eprintln!("forward mode {}, evolution strategies {} (relative difference {rel:.3})", grad[0], est[0]);
    assert!(grad[0].abs() > 1e-3, "a gradient worth estimating: {}", grad[0]);
    assert!(rel < 0.35, "forward mode {} vs evolution strategies {}", grad[0], est[0]);
}

/// A rate circuit integrated by an ODE, with a learning rate to meta-learn on 2-way tasks.
const ODE_META: &str = "circuit ode_meta locality population
meta eta = 0.05
param dt = 1.0
input x[2]
pop o[2] { state v, e }
target y[2] at o
path W: x -> o init xavier_uniform plastic resample
phase forward { d o.v / dt = (W(x) - o.v) / 2 }
phase errors { o.e = y - softmax(o.v) }
plasticity { W.w += eta * post.e * pre }
experiment {
  data = moons
  episodes = 12; ways = 2; shots = 10; queries = 5; eval_episodes = 3
  es_population = 4; es_sigma = 0.01; meta_lr = 0.01
  readout = o.v
}
";

#[test]
fn an_ode_circuit_meta_learns_by_evolution_strategies_and_refuses_gradients() {
    let fe = frontend::load_source("ode_meta.circ", ODE_META, &[]);
    let c = fe.ok().unwrap_or_else(|| panic!("{:?}", fe.diags));
    let exact = frontend::load_source("ode_meta.circ", ODE_META, &[parse_override("es_population=0").unwrap()]);
    let Err(err) = pipeline::lower(exact.ok().unwrap(), 1) else { panic!("forward mode refuses an ODE") };
    assert_eq!(err[0].code, "circ::grad::unsupported");

    let data = circ_runtime::catalog::load("moons", None, 0).unwrap();
    let mut run = build(&fe, 0);
    let cfg = RunConfig { eval_batch: 16, seed: 1, meta: c.experiment.meta.clone(), ..RunConfig::default() };
    let out = driver::train(run.engine.as_mut(), &mut run.state, &run.info, Some(&data), &cfg).unwrap();
    assert_eq!(out.epochs_done, 12);
    let eta = out.monitors.iter().find(|(n, _)| n == "eta").unwrap().1;
    assert!(eta.is_finite() && eta != 0.05, "eta stayed at {eta}");
    assert!(out.test_acc > 0.6, "meta-test accuracy {} on 2-way moons", out.test_acc);
}

#[test]
fn meta_learning_without_meta_params_a_loss_or_enough_samples_is_a_clear_error() {
    let codes = |text: &str| -> Vec<String> {
        let fe = frontend::load_source("m.circ", text, &[]);
        let c = fe.ok().unwrap_or_else(|| panic!("{:?}", fe.diags));
        match pipeline::lower(c, 1) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.code.to_string()).collect(),
        }
    };
    let no_meta = ODE_META.replace("meta eta = 0.05", "param eta = 0.05");
    assert_eq!(codes(&no_meta), ["circ::meta::no_params"]);
    let no_target = ODE_META.replace("target y[2] at o\n", "").replace("o.e = y - softmax(o.v)", "o.e = -softmax(o.v)");
    assert_eq!(codes(&no_target), ["circ::meta::no_loss"]);

    // 2-way tasks need 2 classes with shots + queries samples each in both splits.
    let fe = frontend::load_source("ode_meta.circ", ODE_META, &[parse_override("shots=100000").unwrap()]);
    let c = fe.ok().unwrap();
    let data = circ_runtime::catalog::load("moons", None, 0).unwrap();
    let mut run = build(&fe, 0);
    let cfg = RunConfig { meta: c.experiment.meta.clone(), ..RunConfig::default() };
    let err = driver::train(run.engine.as_mut(), &mut run.state, &run.info, Some(&data), &cfg).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("2-way task needs 2 classes")), "{err:?}");
}
