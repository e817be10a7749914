//! The `circ` binary end to end: the README's example and quickstart, exit codes, outputs.

mod common;

use std::process::Command;

fn circ() -> Command {
    Command::new(env!("CARGO_BIN_EXE_circ"))
}

#[test]
fn readme_example_checks_clean() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let after = readme.split("## A circuit").nth(1).expect("README has a circuit section");
    let code = after.split("```").nth(1).expect("a code block");
    let dir = std::env::temp_dir().join(format!("circ-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("readme.circ");
    std::fs::write(&f, code).unwrap();
    let out = circ().arg("check").arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("population"));
}

#[test]
fn quickstart_trains_and_writes_every_output() {
    let dir = std::env::temp_dir().join(format!("circ-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = circ().args(["run", "examples/quickstart.circ", "--json", "--out"]).arg(&dir).current_dir(common::root()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a final JSON line");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["circuit"], "quickstart");
    assert!(v["test_acc"].as_f64().unwrap() > 0.9, "{v}");
    for f in ["metrics.jsonl", "metrics.csv", "accuracy.png", "loss.png", "checkpoint.npz"] {
        let p = dir.join(f);
        assert!(p.metadata().map(|m| m.len() > 0).unwrap_or(false), "missing {}", p.display());
    }
}

#[test]
fn same_seed_same_metrics_files() {
    let run = |tag: &str| {
        let dir = std::env::temp_dir().join(format!("circ-det-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = circ()
            .args(["run", "examples/quickstart.circ", "--json", "--seed", "3", "--epochs", "3", "--out"])
            .arg(&dir)
            .current_dir(common::root())
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::read_to_string(dir.join("metrics.csv")).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    // train_seconds differs run to run: compare every other column.
    let strip = |s: &str| -> Vec<String> {
        let header: Vec<&str> = s.lines().next().unwrap().split(',').collect();
        let t = header.iter().position(|h| *h == "train_seconds");
        s.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| Some(*i) != t).map(|(_, x)| x).collect::<Vec<_>>().join(",")).collect()
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn check_fails_with_exit_1_on_errors() {
    let out = circ().args(["check", "tests/ui/weight_transport.circ"]).current_dir(common::root()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circ::locality::weight_transport"), "{err}");
}

#[test]
fn unknown_set_name_is_an_error_with_a_suggestion() {
    let out = circ().args(["run", "examples/quickstart.circ", "--set", "hiden=3"]).current_dir(common::root()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circ::cli::unknown_param") && err.contains("did you mean `hidden`"), "{err}");
}

fn run_quick(args: &[&str], out: &std::path::Path) -> std::process::Output {
    circ()
        .args(["run", "examples/quickstart.circ", "--json", "--seed", "1", "--epochs", "4", "--out"])
        .arg(out)
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

fn npz(path: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    use circ_runtime::npz::{read_npz, NpyData};
    let mut v: Vec<(String, Vec<f64>)> = read_npz(path)
        .unwrap()
        .into_iter()
        .map(|a| {
            let data = match a.data {
                NpyData::F32(x) => x.into_iter().map(|v| v as f64).collect(),
                NpyData::F64(x) => x,
                NpyData::I64(x) => x.into_iter().map(|v| v as f64).collect(),
                NpyData::U8(x) => x.into_iter().map(|v| v as f64).collect(),
            };
            (a.name, data)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Metrics without the wall-clock column.
fn metrics_without_time(dir: &std::path::Path) -> Vec<String> {
    let s = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let header: Vec<&str> = s.lines().next().unwrap().split(',').collect();
    let t = header.iter().position(|h| *h == "train_seconds");
    s.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| Some(*i) != t).map(|(_, x)| x).collect::<Vec<_>>().join(",")).collect()
}

#[test]
fn an_interrupted_run_resumes_bit_identically() {
    let base = std::env::temp_dir().join(format!("circ-resume-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let _ = std::fs::remove_dir_all(&base);
    assert!(run_quick(&[], &a).status.success());
    // Stop in the middle of the third epoch (125 steps per epoch), then resume.
    let stop = run_quick(&["--max-steps", "313"], &b);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let resumed = run_quick(&["--resume", b.join("checkpoint.npz").to_str().unwrap()], &b);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(npz(&a.join("checkpoint.npz")), npz(&b.join("checkpoint.npz")), "final state differs");
    assert_eq!(metrics_without_time(&a), metrics_without_time(&b), "metrics differ");
    let last = |o: &std::process::Output| -> serde_json::Value {
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap()
    };
    let (ja, jb) = (last(&run_quick(&[], &base.join("c"))), last(&resumed));
    assert_eq!(ja["test_acc"], jb["test_acc"]);
    assert_eq!(ja["test_loss"], jb["test_loss"]);
    assert_eq!(ja["mean_rate"], jb["mean_rate"]);
}

#[test]
fn sigint_writes_a_checkpoint_and_the_resumed_run_matches_an_uninterrupted_one() {
    let base = std::env::temp_dir().join(format!("circ-sigint-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let _ = std::fs::remove_dir_all(&base);
    let args = ["run", "examples/quickstart.circ", "--json", "--seed", "2", "--epochs", "600", "--out"];
    let child = circ().args(args).arg(&b).current_dir(common::root()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // A step somewhere in the run: 200-800 ms in (the whole run takes seconds).
    let delay = 200 + (std::process::id() as u64 * 7919) % 600;
    std::thread::sleep(std::time::Duration::from_millis(delay));
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "the run finished before the signal or failed: {:?}", out.status);
    assert!(b.join("checkpoint.npz").exists(), "no checkpoint after SIGINT");
    let resumed = circ().args(args).arg(&b).arg("--resume").arg(b.join("checkpoint.npz")).current_dir(common::root()).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let whole = circ().args(args).arg(&a).current_dir(common::root()).output().unwrap();
    assert!(whole.status.success());
    assert_eq!(npz(&a.join("checkpoint.npz")), npz(&b.join("checkpoint.npz")), "final state differs");
    assert_eq!(metrics_without_time(&a), metrics_without_time(&b), "metrics differ");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn monitors_do_not_change_training() {
    // The quickstart with its monitor recorded every step vs. never (monitor_every beyond the run).
    let base = std::env::temp_dir().join(format!("circ-mon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    assert!(run_quick(&["--monitor-every", "1"], &base.join("a")).status.success());
    assert!(run_quick(&["--monitor-every", "100000"], &base.join("b")).status.success());
    assert_eq!(npz(&base.join("a/checkpoint.npz")), npz(&base.join("b/checkpoint.npz")));
}

#[test]
fn bounds_checked_run_matches_the_plain_one() {
    // `--jit-bounds-check` (and CIRC_JIT_BOUNDS_CHECK=1) checks every access; the numbers and
    // the final state are the same bits.
    let base = std::env::temp_dir().join(format!("circ-bounds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    assert!(run_quick(&[], &base.join("a")).status.success());
    let flag = run_quick(&["--jit-bounds-check"], &base.join("b"));
    assert!(flag.status.success(), "{}", String::from_utf8_lossy(&flag.stderr));
    let env = circ()
        .args(["run", "examples/quickstart.circ", "--seed", "1", "--epochs", "4", "--out"])
        .arg(base.join("c"))
        .env("CIRC_JIT_BOUNDS_CHECK", "1")
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(env.status.success(), "{}", String::from_utf8_lossy(&env.stderr));
    assert!(String::from_utf8_lossy(&env.stderr).contains("JIT (bounds-checked)"), "{}", String::from_utf8_lossy(&env.stderr));
    for d in ["b", "c"] {
        assert_eq!(npz(&base.join("a/checkpoint.npz")), npz(&base.join(d).join("checkpoint.npz")), "{d}: final state differs");
        assert_eq!(metrics_without_time(&base.join("a")), metrics_without_time(&base.join(d)), "{d}: metrics differ");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_diverging_run_stops_and_names_the_variable_and_the_equation() {
    let dir = std::env::temp_dir().join(format!("circ-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("diverge.circ");
    // The weights grow without bound, so exp(h.a) overflows to infinity.
    std::fs::write(
        &prog,
        "input x[2]\npop h[4] { a, out r }\npop o[2] { a }\ntarget y[2] at o\n\
         path W: x -> h init uniform(0.5, 1) plastic\npath V: h -> o init uniform(-1, 1) fixed\n\
         phase forward {\n  h.a = W(x)\n  h.r = exp(h.a)\n  o.a = V(h)\n}\n\
         plasticity { W.w += 1 }\nexperiment { data = moons  epochs = 3  batch = 1  readout = o.a }\n",
    )
    .unwrap();
    let out = circ().arg("run").arg(&prog).arg("--out").arg(dir.join("out")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circ::run::non_finite"), "{err}");
    assert!(err.contains("`h.r` became inf"), "names the variable: {err}");
    assert!(err.contains("diverge.circ:9:3"), "names the equation's location: {err}");
    assert!(err.contains("h.r = exp(h.a)"), "shows the equation: {err}");
    let flat = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("the last good state (step"), "keeps the last good state: {err}");
    assert!(dir.join("out/checkpoint.npz").exists());
    assert!(err.contains("at step"), "{err}");
}

#[test]
fn too_much_memory_is_refused_before_allocating() {
    let out = circ()
        .args(["run", "examples/quickstart.circ", "--set", "hidden=100000000", "--max-memory", "1G"])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("circ::run::memory") && err.contains("needs"), "{err}");
}
