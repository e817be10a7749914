//! Memory limits: how much a run may allocate, known before it allocates.
//!
//! Input: the bytes a circuit's buffers need (from checked shapes) and an optional
//! `--max-memory`. Output: Ok, or an error saying how much is needed and what the limit is.
//! Invariant: the check runs before any buffer is allocated.

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum MemoryError {
    #[error("this circuit needs {} of buffers but only {} {}", human(*need), human(*limit), source_name)]
    #[diagnostic(code(circ::run::memory))]
    TooBig {
        need: u128,
        limit: u128,
        source_name: String,
        #[help]
        advice: String,
    },
    #[error("cannot read the memory size `{text}`")]
    #[diagnostic(code(circ::cli::memory_size), help("write a number of bytes with an optional K, M, G or T suffix, e.g. 512M"))]
    BadSize { text: String },
}

/// Bytes as a short human-readable string.
pub fn human(b: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", units[u])
    }
}

/// Parses `512M`, `2G`, `1048576`.
pub fn parse_size(text: &str) -> Result<u128, MemoryError> {
    let t = text.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u128 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().map_err(|_| MemoryError::BadSize { text: text.to_string() })?;
    if !v.is_finite() || v < 0.0 {
        return Err(MemoryError::BadSize { text: text.to_string() });
    }
    Ok((v * mult as f64) as u128)
}

/// The memory this process may use: the cgroup limit where one is set, else MemAvailable.
pub fn available() -> Option<(u128, &'static str)> {
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(v) = s.trim().parse::<u128>() {
            return Some((v, "the cgroup allows"));
        }
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("MemAvailable:") {
            let kb: u128 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            return Some((kb * 1024, "is available"));
        }
    }
    None
}

/// Refuses a run that needs more than the limit (`max` if given, else what is available).
/// `history` is the part of `need` recorded for backpropagation through time.
pub fn check(need: u128, history: u128, max: Option<u128>) -> Result<(), MemoryError> {
    let (limit, why) = match max {
        Some(m) => (m, "--max-memory allows"),
        None => match available() {
            Some(a) => a,
            None => return Ok(()),
        },
    };
    if need > limit {
        let advice = if history * 2 > need {
            format!(
                "{} of it is the history grad() records through time loops: `bptt_checkpoint = K` in the experiment \
                 (or --set bptt_checkpoint=K) stores the loop state every K iterations and recomputes the rest \
                 (K near the square root of the loop length needs the least)",
                human(history)
            )
        } else {
            "reduce population sizes or the batch size, or raise the limit with --max-memory".to_string()
        };
        return Err(MemoryError::TooBig { need, limit, source_name: why.to_string(), advice });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
    }

    #[test]
    fn limit_is_enforced_before_allocation() {
        assert!(check(10, 0, Some(100)).is_ok());
        let e = check(200 << 30, 0, Some(1 << 30)).unwrap_err();
        assert!(e.to_string().contains("200.0 GiB"), "{e}");
        assert!(e.to_string().contains("1.0 GiB"), "{e}");
    }

    #[test]
    fn a_run_dominated_by_history_is_told_about_checkpoints() {
        let help = |e: MemoryError| miette::Diagnostic::help(&e).map(|h| h.to_string()).unwrap_or_default();
        assert!(help(check(200 << 30, 150 << 30, Some(1 << 30)).unwrap_err()).contains("bptt_checkpoint"));
        assert!(help(check(200 << 30, 10 << 30, Some(1 << 30)).unwrap_err()).contains("--max-memory"));
    }
}
