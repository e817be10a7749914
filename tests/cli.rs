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
