//! `circ fmt` (compiler/src/format.rs), data-driven:
//!
//! - every program of the corpus (stdlib/, examples/): formatting is idempotent, the output
//!   parses to the same AST up to spans, and every comment of the input appears in the output,
//!   in order;
//! - every `tests/fmt/NAME.circ` formats to `tests/fmt/NAME.expected.circ` (written afresh
//!   with `CIRC_BLESS=1`), which is itself formatted;
//! - the binary: `--check` exit codes and output, in-place rewriting, stdin, parse errors.

mod common;

use circ_compiler::ast::Program;
use circ_compiler::format::{comment_texts, format};
use circ_compiler::syntax::parse;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The AST's pretty Debug dump without spans (lines `file: N,`, `lo: N,`, `hi: N,` of
/// `Span { .. }`), written independently of the formatter's own comparison.
fn shape(p: &Program) -> String {
    let dump = format!("{p:#?}");
    let is_span_field = |l: &str| {
        let t = l.trim();
        ["file: ", "lo: ", "hi: "]
            .iter()
            .any(|f| t.strip_prefix(f).and_then(|n| n.strip_suffix(',')).is_some_and(|n| n.parse::<u64>().is_ok()))
    };
    dump.lines().filter(|l| !is_span_field(l)).collect::<Vec<_>>().join("\n")
}

/// Checks the invariants of `format` on `text` and returns the formatted text.
fn check_invariants(name: &str, text: &str) -> String {
    let once = format(0, text).unwrap_or_else(|d| panic!("{name}: {} ({})", d.message, d.code));
    let twice = format(0, &once).unwrap_or_else(|d| panic!("{name}: formatted text fails: {}", d.message));
    assert!(once == twice, "{name}: not idempotent:\n--- once\n{once}\n--- twice\n{twice}");
    let before = parse(0, text).unwrap();
    let after = parse(0, &once).unwrap_or_else(|d| panic!("{name}: formatted text does not parse: {}", d.message));
    assert!(shape(&before) == shape(&after), "{name}: the AST changed");
    // Every comment, in order, in the output text.
    let mut at = 0;
    for c in comment_texts(text) {
        match once[at..].find(&c) {
            Some(i) => at += i + c.len(),
            None => panic!("{name}: comment lost or out of order: {c:?}"),
        }
    }
    assert!(once.is_empty() || once.ends_with('\n') && !once.ends_with("\n\n"), "{name}: not one final newline");
    assert!(once.lines().all(|l| l == l.trim_end()), "{name}: trailing whitespace");
    assert!(!once.contains("\n\n\n"), "{name}: a run of blank lines");
    once
}

#[test]
fn corpus_formats_faithfully_and_idempotently() {
    let files = common::corpus();
    assert!(files.len() >= 20, "corpus too small: {}", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        check_invariants(&f.display().to_string(), &text);
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = common::root().join("tests/fmt");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "circ") && !p.to_string_lossy().ends_with(".expected.circ"))
        .collect();
    v.sort();
    v
}

#[test]
fn messy_inputs_format_as_expected() {
    let cases = cases();
    assert!(cases.len() >= 5, "missing cases in tests/fmt");
    let bless = std::env::var_os("CIRC_BLESS").is_some();
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let got = check_invariants(&case.display().to_string(), &text);
        let expected_path = case.with_extension("expected.circ");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
        assert!(got == expected, "{}: got\n{got}\n--- expected\n{expected}", case.display());
        assert_eq!(format(0, &expected).unwrap(), expected, "{} is not formatted", expected_path.display());
    }
}

#[test]
fn odd_inputs_keep_meaning() {
    let cases = [
        "",
        "\n\n\n",
        "// only a comment",
        "/* unterminated? no: */ param a = 1",
        "param a = ((1))\nparam b = -(-(a))\nparam c = 2 ^ 3 ^ 4\nparam d = (2 ^ 3) ^ 4\nparam e = -2 ^ 2\nparam f = (-2) ^ 2\n",
        "param a = 1 - (2 - 3)\nparam b = (1 - 2) - 3\nparam c = 1 / (2 * 3)\nparam d = !(1 < 2) || 1 < 2 && 2 < 3\n",
        "param x = 1. \nfor l in 1. .. 3 { param y = .5 }",
        "param a = 1 /* one */ /* two */ // three\nparam b = 2",
        "param a = 1\n\n\n\n// c\n\n\n\nparam b = 2\n",
        "input x[2];pop h[2]{a};phase f{h.a=x;h.a+=1;}",
        "if 1 > 0 { param a = 1 } else if 2 > 0 { param a = 2 } else { param a = 3 }",
        "pop h[2] {}\nphase f {\n}\nplasticity {}\n",
        "phase f {\n  h.a = x\n    // comment at the end of a block\n}\n",
        "param s = \"// not a comment\" // a comment\nimport \"/* x */.circ\"\n",
        "param T2 = 1\nparam a = 2 ^ T2 + W^T(x) + Wᵀ(x) + W[l-1]^T(x)\n",
    ];
    for (i, c) in cases.iter().enumerate() {
        check_invariants(&format!("case {i}: {c:?}"), c);
    }
}

#[test]
fn parse_errors_are_returned_not_formatted() {
    let d = format(0, "param a = \nphase {").unwrap_err();
    assert!(d.code.starts_with("circ::parse"), "{}", d.code);
}

fn circ() -> Command {
    Command::new(env!("CARGO_BIN_EXE_circ"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("circ-fmt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn cli_check_exit_codes_and_in_place_rewrite() {
    let dir = temp_dir("cli");
    let clean = write(&dir, "clean.circ", "param a = 1\n");
    let messy = write(&dir, "messy.circ", "param a=1\nparam b = 2\n");
    let bad = write(&dir, "bad.circ", "param a = \n");

    let out = circ().args(["fmt", "--check"]).arg(&clean).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());

    let out = circ().args(["fmt", "--check"]).arg(&clean).arg(&messy).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("messy.circ: would reformat") && !stdout.contains("clean.circ"), "{stdout}");
    assert!(stdout.contains("-param a=1\n+param a = 1\n"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), "param a=1\nparam b = 2\n", "--check wrote");

    // A parse error: reported with its code, the file untouched, exit 1; others still done.
    let out = circ().arg("fmt").arg(&bad).arg(&messy).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("circ::parse::syntax"));
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "param a = \n");
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), "param a = 1\nparam b = 2\n");

    // Rewritten in place, then clean; no temporary file left behind.
    let out = circ().args(["fmt", "--check"]).arg(&messy).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");

    let out = circ().args(["fmt", "--check"]).arg(dir.join("missing.circ")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_stdin_to_stdout() {
    use std::io::Write as _;
    let run = |args: &[&str], input: &str| {
        let mut child = circ()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["fmt"], "param a=1");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "param a = 1\n");
    let out = run(&["fmt", "-", "--check"], "param a=1");
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["fmt", "--check", "-"], "param a = 1\n");
    assert_eq!(out.status.code(), Some(0));
    let out = run(&["fmt"], "param a = ");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// Comments inserted at many places of real programs (and characters removed) never make the
/// formatter fail its own checks: every parsing variant formats faithfully and idempotently.
#[test]
fn comments_anywhere_and_mutations() {
    // CIRC_FMT_EXHAUSTIVE=1: every position of every corpus file (many minutes);
    // CIRC_FMT_EXHAUSTIVE=a.circ,b.circ: every position of these files.
    let exhaustive = std::env::var("CIRC_FMT_EXHAUSTIVE").ok();
    let names: Vec<PathBuf> = if exhaustive.as_deref() == Some("1") {
        common::corpus()
    } else if let Some(list) = &exhaustive {
        list.split(',').map(|n| common::root().join(n)).collect()
    } else {
        ["stdlib/fa.circ", "stdlib/optim.circ", "examples/tutorial/moons.circ"].iter().map(|n| common::root().join(n)).collect()
    };
    for path in names {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(if exhaustive.is_some() { 1 } else { 17 }).collect();
        for (k, &i) in cuts.iter().enumerate() {
            let insert = ["/* c */", "// c\n", "\n\n", " "][k % 4];
            let mut variants = vec![format!("{}{insert}{}", &text[..i], &text[i..])];
            let mut removed = text.clone();
            removed.remove(i);
            variants.push(removed);
            for v in variants {
                if parse(0, &v).is_ok() {
                    check_invariants(&format!("{name} at {i} ({insert:?})"), &v);
                }
            }
        }
    }
}
