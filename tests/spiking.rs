//! Spiking circuits of the standard library end to end: the STDP window against its analytic
//! curve, and the competition of Song, Miller & Abbott (2000).

mod common;

use circ_compiler::frontend;
use circ_compiler::pipeline::{self, EngineKind};
use circ_compiler::resolve::parse_override;
use circ_runtime::driver::{self, RunConfig};
use circ_runtime::plot::{self, Series};
use circ_runtime::state::State;

/// Runs a no-data stdlib program with overrides and returns its final monitors.
fn run(file: &str, sets: &[String], epochs: usize) -> Vec<(String, f64)> {
    let ov: Vec<_> = sets.iter().map(|s| parse_override(s).unwrap()).collect();
    let fe = frontend::load_file(&common::root().join(file), &ov).unwrap();
    let c = fe.ok().unwrap_or_else(|| panic!("{file} does not check: {:?}", fe.diags));
    let p = pipeline::lower(c, 1).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let mut state = State::new(&p.buffers, 1, p.precision, 0);
    let mut engine = pipeline::engine(p, EngineKind::Jit).unwrap();
    let cfg = RunConfig { epochs, steps: 1, monitor_every: 1, ..RunConfig::default() };
    driver::train(engine.as_mut(), &mut state, &info, None, &cfg).unwrap().monitors
}

fn monitor(ms: &[(String, f64)], name: &str) -> f64 {
    ms.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no monitor {name}"))
}

#[test]
fn stdp_window_matches_the_analytic_curve_within_one_percent() {
    let (a_plus, a_minus, tau) = (0.005, 0.00525, 20.0);
    let mut measured = Vec::new();
    let mut analytic = Vec::new();
    for k in -50..=50 {
        let dt = k as f64;
        if k == 0 {
            continue; // Simultaneous spikes: the pair rule has no single analytic value.
        }
        let ms = run("stdlib/stdp_window.circ", &[format!("delta={dt}")], 1);
        let dw = monitor(&ms, "dw");
        let want = if dt > 0.0 { a_plus * (-dt / tau).exp() } else { -a_minus * (dt / tau).exp() };
        assert!((dw - want).abs() <= 0.01 * want.abs(), "Δt = {dt} ms: Δw = {dw}, analytic {want}");
        measured.push((dt, dw));
        analytic.push((dt, want));
    }
    let out = common::root().join("target").join("stdp_window.png");
    plot::line_plot(
        &out,
        "STDP window",
        "Δt = t_post − t_pre (ms)",
        "Δw",
        &[Series::new("measured", measured), Series::new("A± exp(∓Δt/τ±)", analytic)],
    )
    .unwrap();
}

#[test]
fn poisson_inputs_compete_and_weights_become_bimodal() {
    // 100 s of simulated time at dt = 0.1 ms.
    let ms = run("stdlib/stdp.circ", &[], 100);
    let (low, high) = (monitor(&ms, "near_zero"), monitor(&ms, "near_max"));
    assert!(low >= 0.15 && high >= 0.15, "after 100 s: {low} of synapses near 0 and {high} near g_max");
}
