//! Metrics log: rows of named scalar metrics written as `metrics.jsonl` and `metrics.csv`.
//!
//! Input: rows recorded during a run (`step`, `epoch`, and `name → f64` pairs).
//! Output: `DIR/metrics.jsonl` (one JSON object per row) and `DIR/metrics.csv` (a header and one
//! line per row), rewritten whole and atomically on every [`MetricsLog::flush`].
//!
//! Invariants:
//! - Columns appear in first-seen order, after `step` and `epoch`, so files from runs of the
//!   same circuit line up column for column.
//! - A metric missing from a row is omitted from its JSON object and left empty in the CSV.
//! - Non-finite values survive: JSON has no NaN, so they are written as `null` in JSONL and as
//!   `NaN`, `inf`, `-inf` in CSV (which pandas and NumPy parse).
//! - Floats are printed in shortest round-trip form, so reading a file back gives the exact
//!   recorded `f64`.
//! - Readers never see a half-written file (atomic rewrite).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::atomic::write_atomic;

/// File name of the JSON-lines output.
pub const METRICS_JSONL: &str = "metrics.jsonl";
/// File name of the CSV output.
pub const METRICS_CSV: &str = "metrics.csv";

/// Why metrics could not be recorded or written.
#[derive(Debug, Error, Diagnostic)]
pub enum MetricsError {
    /// The output directory could not be created.
    #[error("cannot create output directory {}: {source}", path.display())]
    #[diagnostic(code(circ::metrics::create_dir), help("choose a writable output directory with `--out DIR`"))]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A metrics file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    #[diagnostic(code(circ::metrics::write), help("check free space and permissions of the output directory (`--out DIR`)"))]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A metric name collides with a built-in column or is empty.
    #[error("metric name `{name}` is not allowed: {reason}")]
    #[diagnostic(code(circ::metrics::bad_name), help("rename the monitor or metric; `step` and `epoch` are reserved columns"))]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

/// One recorded row. `values[i]` belongs to column `i` of [`MetricsLog::columns`]; the vector
/// may be shorter than the column list (columns first seen in later rows).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    /// Global optimisation step (or trial / episode counter).
    pub step: u64,
    /// Epoch (or outer-loop generation).
    pub epoch: u64,
    /// Values by column index; `None` where this row has no value.
    pub values: Vec<Option<f64>>,
}

/// Collects metric rows and writes them to an output directory.
#[derive(Debug, Clone)]
pub struct MetricsLog {
    dir: Option<PathBuf>,
    columns: Vec<String>,
    index: HashMap<String, usize>,
    rows: Vec<MetricsRow>,
}

impl MetricsLog {
    /// A log writing into `dir` (created if missing, with parents).
    pub fn new(dir: &Path) -> Result<Self, MetricsError> {
        std::fs::create_dir_all(dir).map_err(|source| MetricsError::CreateDir { path: dir.to_path_buf(), source })?;
        Ok(Self { dir: Some(dir.to_path_buf()), ..Self::in_memory() })
    }

    /// A log that keeps rows in memory only; [`MetricsLog::flush`] does nothing. For runs
    /// without `--out` that still need final values (e.g. for `--json`).
    pub fn in_memory() -> Self {
        Self { dir: None, columns: Vec::new(), index: HashMap::new(), rows: Vec::new() }
    }

    /// Records one row. A name repeated within `values` keeps its last value.
    pub fn record(&mut self, step: u64, epoch: u64, values: &[(&str, f64)]) -> Result<(), MetricsError> {
        // Validate everything first so a bad name leaves the log unchanged.
        for (name, _) in values {
            if name.is_empty() {
                return Err(MetricsError::BadName { name: String::new(), reason: "it is empty" });
            }
            if *name == "step" || *name == "epoch" {
                return Err(MetricsError::BadName { name: name.to_string(), reason: "it is a reserved column" });
            }
        }
        let mut row = MetricsRow { step, epoch, values: Vec::new() };
        for &(name, v) in values {
            let col = match self.index.get(name) {
                Some(&c) => c,
                None => {
                    self.columns.push(name.to_string());
                    self.index.insert(name.to_string(), self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            if row.values.len() <= col {
                row.values.resize(col + 1, None);
            }
            row.values[col] = Some(v);
        }
        self.rows.push(row);
        Ok(())
    }

    /// Metric columns in first-seen order (without `step` and `epoch`).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// All rows recorded so far.
    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }

    /// The most recent value recorded for `name`, if any.
    pub fn last(&self, name: &str) -> Option<f64> {
        let &col = self.index.get(name)?;
        self.rows.iter().rev().find_map(|r| r.values.get(col).copied().flatten())
    }

    /// Every `(step, value)` recorded for `name`, in order: a learning curve for plotting.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let Some(&col) = self.index.get(name) else {
            return Vec::new();
        };
        self.rows.iter().filter_map(|r| Some((r.step as f64, r.values.get(col).copied().flatten()?))).collect()
    }

    /// The JSON-lines text: one object per row, keys `step`, `epoch`, then metrics in column
    /// order.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for r in &self.rows {
            out.push_str(&format!("{{\"step\":{},\"epoch\":{}", r.step, r.epoch));
            for (col, v) in r.values.iter().enumerate() {
                if let Some(v) = v {
                    out.push(',');
                    out.push_str(&json_string(&self.columns[col]));
                    out.push(':');
                    out.push_str(&json_number(*v));
                }
            }
            out.push_str("}\n");
        }
        out
    }

    /// The CSV text: header `step,epoch,<columns…>`, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("step,epoch");
        for c in &self.columns {
            out.push(',');
            out.push_str(&csv_field(c));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("{},{}", r.step, r.epoch));
            for col in 0..self.columns.len() {
                out.push(',');
                if let Some(v) = r.values.get(col).copied().flatten() {
                    out.push_str(&csv_number(v));
                }
            }
            out.push('\n');
        }
        out
    }

    /// Rewrites `metrics.jsonl` and `metrics.csv` atomically (no-op for an in-memory log).
    pub fn flush(&self) -> Result<(), MetricsError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for (name, text) in [(METRICS_JSONL, self.to_jsonl()), (METRICS_CSV, self.to_csv())] {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes()).map_err(|source| MetricsError::Write { path, source })?;
        }
        Ok(())
    }
}

fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail; the fallback only keeps this panic-free.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Shortest round-trip form via serde_json (ryu); `null` for NaN and ±inf.
fn json_number(v: f64) -> String {
    if v.is_finite() {
        serde_json::to_string(&v).unwrap_or_else(|_| "null".into())
    } else {
        "null".into()
    }
}

fn csv_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        json_number(v)
    }
}

/// Quotes a CSV field when it contains a separator, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One JSON object on one line with keys in the given order (later duplicates replace the
/// value but keep the first position). For `circ run --json`'s final line.
pub fn final_json_line(fields: &[(&str, serde_json::Value)]) -> String {
    let mut keys: Vec<&str> = Vec::new();
    let mut vals: Vec<&serde_json::Value> = Vec::new();
    for (k, v) in fields {
        match keys.iter().position(|x| x == k) {
            Some(i) => vals[i] = v,
            None => {
                keys.push(k);
                vals.push(v);
            }
        }
    }
    let body: Vec<String> = keys.iter().zip(vals).map(|(k, v)| format!("{}:{}", json_string(k), v)).collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::tests::scratch_dir;
    use serde_json::{json, Value};

    #[test]
    fn writes_jsonl_and_csv_with_stable_columns() {
        let root = scratch_dir("metrics");
        let dir = root.join("run/out");
        let mut log = MetricsLog::new(&dir).unwrap();
        log.record(1, 0, &[("loss", 2.5), ("acc", 0.1)]).unwrap();
        log.record(2, 0, &[("acc", 0.2), ("angle, deg", 88.0)]).unwrap();
        log.record(3, 1, &[("loss", f64::NAN), ("acc", f64::INFINITY)]).unwrap();
        log.flush().unwrap();
        assert_eq!(log.columns(), &["loss", "acc", "angle, deg"]);
        let csv = std::fs::read_to_string(dir.join(METRICS_CSV)).unwrap();
        assert_eq!(csv, "step,epoch,loss,acc,\"angle, deg\"\n1,0,2.5,0.1,\n2,0,,0.2,88.0\n3,1,NaN,inf,\n");
        let jsonl = std::fs::read_to_string(dir.join(METRICS_JSONL)).unwrap();
        let lines: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], json!({"step": 1, "epoch": 0, "loss": 2.5, "acc": 0.1}));
        assert_eq!(lines[1]["angle, deg"], json!(88.0));
        assert!(lines[1].get("loss").is_none());
        assert_eq!(lines[2]["loss"], Value::Null);
        // Key order in the text follows the columns.
        assert!(jsonl.lines().next().unwrap().starts_with("{\"step\":1,\"epoch\":0,\"loss\""));
        assert_eq!(log.last("loss").map(f64::is_nan), Some(true));
        assert_eq!(log.last("angle, deg"), Some(88.0));
        assert_eq!(log.last("nope"), None);
        assert_eq!(log.series("acc")[..2], [(1.0, 0.1), (2.0, 0.2)]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn floats_round_trip_exactly() {
        let mut log = MetricsLog::in_memory();
        let vals = [0.1, 1.0 / 3.0, 1e-300, 6.02214076e23, -0.0, f64::MIN_POSITIVE];
        for (i, v) in vals.iter().enumerate() {
            log.record(i as u64, 0, &[("x", *v)]).unwrap();
        }
        log.flush().unwrap(); // no-op, no directory
        for (line, v) in log.to_csv().lines().skip(1).zip(vals) {
            let field = line.rsplit(',').next().unwrap();
            assert_eq!(field.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{field}");
        }
    }

    #[test]
    fn flush_rewrites_whole_files() {
        let dir = scratch_dir("metrics-rewrite");
        let mut log = MetricsLog::new(&dir).unwrap();
        log.record(1, 0, &[("a", 1.0)]).unwrap();
        log.flush().unwrap();
        log.record(2, 0, &[("b", 2.0)]).unwrap();
        log.flush().unwrap();
        let csv = std::fs::read_to_string(dir.join(METRICS_CSV)).unwrap();
        assert_eq!(csv, "step,epoch,a,b\n1,0,1.0,\n2,0,,2.0\n");
        let n = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(n, 2, "no temp files");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reserved_and_empty_names_are_errors() {
        let mut log = MetricsLog::in_memory();
        let e = log.record(0, 0, &[("ok", 1.0), ("step", 1.0)]).unwrap_err();
        assert!(matches!(e, MetricsError::BadName { .. }));
        assert!(log.rows().is_empty() && log.columns().is_empty(), "unchanged");
        assert!(log.record(0, 0, &[("", 1.0)]).is_err());
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = scratch_dir("metrics-file");
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = MetricsLog::new(&file.join("sub")).unwrap_err();
        assert!(matches!(e, MetricsError::CreateDir { .. }));
        assert!(e.to_string().contains("not-a-dir"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn final_line_keeps_order() {
        let line = final_json_line(&[
            ("circuit", json!("fa_mnist")),
            ("test_acc", json!(0.97)),
            ("seed", json!(7)),
            ("test_acc", json!(0.98)),
            ("nan", json!(f64::NAN)),
        ]);
        assert_eq!(line, r#"{"circuit":"fa_mnist","test_acc":0.98,"seed":7,"nan":null}"#);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seed"], 7);
    }
}
