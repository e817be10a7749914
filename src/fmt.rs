//! `circ fmt`: rewrite programs in their canonical layout (compiler/src/format.rs).
//!
//! Input: file paths (`-` or none: stdin), `--check`. Output: files rewritten atomically
//! (temp file + rename), or with `--check` nothing written and, for every file that would
//! change, its name and the changed lines on stdout. Exit codes: 0 nothing to do (or done),
//! 1 a file would change (`--check`), does not parse, or cannot be read or written.
//! Invariant: a file that does not parse, or that the formatter cannot format faithfully, is
//! never touched.

use crate::cli::print_diags;
use circ_compiler::diag::Sources;
use circ_compiler::format::format;
use std::io::Read as _;
use std::path::PathBuf;

pub fn fmt(files: &[PathBuf], check: bool) -> i32 {
    if files.is_empty() || (files.len() == 1 && files[0].as_os_str() == "-") {
        return stdin(check);
    }
    let mut code = 0;
    for f in files {
        if f.as_os_str() == "-" {
            eprintln!("error: `-` (stdin) cannot be mixed with files");
            return 2;
        }
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                code = 1;
                continue;
            }
        };
        let Some(out) = formatted(&f.display().to_string(), &text) else {
            code = 1;
            continue;
        };
        if out == text {
            continue;
        }
        if check {
            outln!("{}: would reformat", f.display());
            out!("{}", diff(&text, &out));
            code = 1;
        } else if let Err(e) = rewrite(f, &out) {
            eprintln!("error: cannot write {}: {e}", f.display());
            code = 1;
        }
    }
    code
}

/// Replaces the file's contents atomically. A symbolic link stays a link (its target is
/// rewritten) and the file keeps its permissions.
fn rewrite(f: &std::path::Path, text: &str) -> std::io::Result<()> {
    let target = std::fs::canonicalize(f)?;
    let perms = std::fs::metadata(&target)?.permissions();
    circ_runtime::atomic::write_atomic(&target, text.as_bytes())?;
    std::fs::set_permissions(&target, perms)
}

fn stdin(check: bool) -> i32 {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("error: cannot read stdin: {e}");
        return 1;
    }
    let Some(out) = formatted("<stdin>", &text) else { return 1 };
    if !check {
        out!("{out}");
        return 0;
    }
    if out == text {
        return 0;
    }
    outln!("<stdin>: would reformat");
    out!("{}", diff(&text, &out));
    1
}

/// The formatted text, or None after printing the diagnostic.
fn formatted(name: &str, text: &str) -> Option<String> {
    let mut sources = Sources::default();
    let id = sources.add(name, text);
    match format(id, text) {
        Ok(out) => Some(out),
        Err(d) => {
            print_diags(&[d], &sources);
            None
        }
    }
}

/// Most diff lines printed per file.
const MAX_DIFF_LINES: usize = 40;

/// The changed lines of `a` → `b` as `-`/`+` lines under `@@ -line +line @@` headers (a line
/// diff by longest common subsequence; for very long files, only the first differing line).
fn diff(a: &str, b: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let (n, m) = (x.len(), y.len());
    if n.saturating_mul(m) > 4_000_000 {
        let i = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
        let show = |v: &[&str]| v.get(i).map_or("(end of file)".to_string(), |s| s.to_string());
        return format!("@@ line {} @@\n-{}\n+{}\n", i + 1, show(&x), show(&y));
    }
    // lcs[i][j]: length of the longest common subsequence of x[i..] and y[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if x[i] == y[j] { lcs[at(i + 1, j + 1)] + 1 } else { lcs[at(i + 1, j)].max(lcs[at(i, j + 1)]) };
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut in_hunk = false;
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            i += 1;
            j += 1;
            in_hunk = false;
            continue;
        }
        if !in_hunk {
            out.push(format!("@@ -{} +{} @@", i + 1, j + 1));
            in_hunk = true;
        }
        if j >= m || (i < n && lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            out.push(format!("-{}", x[i]));
            i += 1;
        } else {
            out.push(format!("+{}", y[j]));
            j += 1;
        }
    }
    let total = out.len();
    let mut s: String = out.iter().take(MAX_DIFF_LINES).map(|l| format!("{l}\n")).collect();
    if total > MAX_DIFF_LINES {
        s += &format!("... ({} more diff lines)\n", total - MAX_DIFF_LINES);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn diff_shows_changed_lines() {
        assert_eq!(diff("a\nb\nc\n", "a\nB\nc\n"), "@@ -2 +2 @@\n-b\n+B\n");
        assert_eq!(diff("a\n", "a\nb\n"), "@@ -2 +2 @@\n+b\n");
        assert_eq!(diff("", ""), "");
    }
}
