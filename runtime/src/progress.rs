//! Progress reporting for training runs.
//!
//! Input: a label, the total number of steps, and increments / messages / epoch summaries as
//! the run proceeds.
//! Output (to stderr): on a terminal, an indicatif bar with position, rate and ETA; otherwise
//! (CI logs, pipes) plain lines at every 10% of progress and at each epoch end; nothing at
//! all in quiet mode (`--json`, where stdout must hold only the final JSON line and stderr
//! should stay clean for machines).
//!
//! Invariants:
//! - Progress never writes to stdout.
//! - Plain mode prints at most one line per 10% of `total` (plus the lines the caller asks
//!   for), so logs stay short however many steps there are.
//! - Reporting is cheap enough to call on every step: plain mode does one comparison, the bar
//!   rate-limits its own redraws.
//! - Progress output never affects training (it only reads the counters it is given).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar if stderr is a terminal, plain lines otherwise.
    Auto,
    /// An indicatif bar on stderr.
    Bar,
    /// Plain lines on stderr.
    Plain,
    /// Nothing.
    Quiet,
}

enum Sink {
    Bar(ProgressBar),
    Plain(Box<dyn Write + Send>),
    Quiet,
}

/// A progress reporter; see the module docs for what each mode prints.
pub struct Progress {
    sink: Sink,
    label: String,
    total: u64,
    pos: u64,
    /// Plain mode: the next position at which a line is due.
    next_line_at: u64,
    message: String,
    start: Instant,
    finished: bool,
}

impl Progress {
    /// A reporter for `total` steps: quiet if `quiet`, else a bar on a terminal and plain
    /// lines otherwise.
    pub fn new(label: &str, total: u64, quiet: bool) -> Self {
        let mode = if quiet { ProgressMode::Quiet } else { ProgressMode::Auto };
        Self::with_mode(label, total, mode)
    }

    /// A reporter in an explicit mode (`Auto` is resolved by looking at stderr).
    pub fn with_mode(label: &str, total: u64, mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let sink = match mode {
            ProgressMode::Bar => Sink::Bar(make_bar(label, total, ProgressDrawTarget::stderr())),
            ProgressMode::Plain => Sink::Plain(Box::new(std::io::stderr())),
            _ => Sink::Quiet,
        };
        Self::from_sink(sink, label, total)
    }

    /// A plain-lines reporter writing to `out` instead of stderr (for logs and tests).
    pub fn plain_to(label: &str, total: u64, out: Box<dyn Write + Send>) -> Self {
        Self::from_sink(Sink::Plain(out), label, total)
    }

    fn from_sink(sink: Sink, label: &str, total: u64) -> Self {
        let mut p = Self {
            sink,
            label: label.to_string(),
            total,
            pos: 0,
            next_line_at: 0,
            message: String::new(),
            start: Instant::now(),
            finished: false,
        };
        p.next_line_at = p.step_for_tenth(1);
        p
    }

    /// The mode actually in use (never `Auto`).
    pub fn mode(&self) -> ProgressMode {
        match self.sink {
            Sink::Bar(_) => ProgressMode::Bar,
            Sink::Plain(_) => ProgressMode::Plain,
            Sink::Quiet => ProgressMode::Quiet,
        }
    }

    /// Steps done so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Position at which `k` tenths of the total are done (`u64::MAX` when the total is
    /// unknown, i.e. 0, so plain mode then prints only explicit lines).
    fn step_for_tenth(&self, k: u64) -> u64 {
        if self.total == 0 {
            return u64::MAX;
        }
        // Round up so that "10%" is printed only once 10% is really done; at least 1 step.
        ((u128::from(self.total) * u128::from(k)).div_ceil(10) as u64).max(1)
    }

    /// Advances by `n` steps.
    pub fn inc(&mut self, n: u64) {
        self.pos = self.pos.saturating_add(n);
        match &self.sink {
            Sink::Bar(b) => b.inc(n),
            Sink::Plain(_) => {
                if self.pos >= self.next_line_at {
                    let line = self.status_line();
                    self.write_plain(&line);
                    // Skip every tenth already passed (a large `n` may cross several).
                    let tenths = (u128::from(self.pos) * 10 / u128::from(self.total.max(1))) as u64;
                    self.next_line_at = if tenths >= 10 { u64::MAX } else { self.step_for_tenth(tenths + 1) };
                }
            }
            Sink::Quiet => {}
        }
    }

    /// Sets the short status shown after the rate (e.g. `loss 0.231`).
    pub fn set_message(&mut self, msg: impl Into<String>) {
        self.message = msg.into();
        if let Sink::Bar(b) = &self.sink {
            b.set_message(self.message.clone());
        }
    }

    /// Prints a full line (above the bar on a terminal); nothing in quiet mode.
    pub fn println(&mut self, line: &str) {
        match &self.sink {
            Sink::Bar(b) => b.println(line),
            Sink::Plain(_) => self.write_plain(line),
            Sink::Quiet => {}
        }
    }

    /// Reports the end of an epoch with a summary such as `test_acc 0.91 test_loss 0.30`.
    pub fn epoch_end(&mut self, epoch: u64, summary: &str) {
        let line = format!("{}: epoch {epoch} done: {summary}", self.label);
        self.println(&line);
    }

    /// Ends the report: the bar is finished in place; plain mode prints a summary line.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.start.elapsed();
        match &self.sink {
            Sink::Bar(b) => b.finish(),
            Sink::Plain(_) => {
                let line =
                    format!("{}: finished {} steps in {} ({})", self.label, self.pos, fmt_duration(elapsed), fmt_rate(self.pos, elapsed));
                self.write_plain(&line);
            }
            Sink::Quiet => {}
        }
    }

    fn status_line(&self) -> String {
        let elapsed = self.start.elapsed();
        let pct = if self.total == 0 { 0 } else { (u128::from(self.pos.min(self.total)) * 100 / u128::from(self.total)) as u64 };
        let mut line = format!("{}: {pct:>3}% ({}/{}) {}", self.label, self.pos, self.total, fmt_rate(self.pos, elapsed));
        if self.pos < self.total && self.pos > 0 {
            let secs = elapsed.as_secs_f64() * (self.total - self.pos) as f64 / self.pos as f64;
            line.push_str(&format!(", eta {}", fmt_duration(Duration::from_secs_f64(secs))));
        }
        if !self.message.is_empty() {
            line.push_str(", ");
            line.push_str(&self.message);
        }
        line
    }

    fn write_plain(&mut self, line: &str) {
        if let Sink::Plain(w) = &mut self.sink {
            // Progress is best effort: a closed stderr must not abort training.
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A bar left unfinished (early return on error) is abandoned in place so the last
        // position stays visible above the error message instead of being redrawn over it.
        if let Sink::Bar(b) = &self.sink {
            if !self.finished {
                b.abandon();
            }
        }
    }
}

fn make_bar(label: &str, total: u64, target: ProgressDrawTarget) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} eta {eta} {msg}")
        // The template is a constant, so this fallback is unreachable; it keeps `new` panic-free.
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), target).with_style(style);
    bar.set_prefix(label.to_string());
    bar
}

fn fmt_rate(pos: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-- steps/s".into();
    }
    let r = pos as f64 / secs;
    if r >= 100.0 {
        format!("{r:.0} steps/s")
    } else {
        format!("{r:.2} steps/s")
    }
}

/// `1h02m03s`, `4m05s`, `6.1s`.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Shared {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_string).collect()
        }
    }

    #[test]
    fn plain_prints_every_tenth_and_epochs() {
        let out = Shared::default();
        let mut p = Progress::plain_to("train", 1000, Box::new(out.clone()));
        assert_eq!(p.mode(), ProgressMode::Plain);
        p.set_message("loss 0.5");
        for step in 0..1000 {
            p.inc(1);
            if step == 499 {
                p.epoch_end(1, "test_acc 0.5");
            }
        }
        p.finish();
        p.finish(); // idempotent
        let lines = out.lines();
        let progress: Vec<&String> = lines.iter().filter(|l| l.contains('%')).collect();
        assert_eq!(progress.len(), 10, "{lines:#?}");
        assert!(progress[0].starts_with("train:  10% (100/1000)"), "{}", progress[0]);
        assert!(progress[0].contains("eta") && progress[0].ends_with("loss 0.5"));
        assert!(progress[9].starts_with("train: 100% (1000/1000)"));
        assert!(lines.contains(&"train: epoch 1 done: test_acc 0.5".to_string()));
        assert!(lines.last().unwrap().starts_with("train: finished 1000 steps in "));
        assert_eq!(lines.len(), 12);
        assert_eq!(p.position(), 1000);
    }

    #[test]
    fn big_increments_and_small_totals() {
        let out = Shared::default();
        let mut p = Progress::plain_to("x", 3, Box::new(out.clone()));
        p.inc(2);
        p.inc(5); // past the end
        p.finish();
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains(" 66% (2/3)"));
        assert!(lines[1].contains("100% (7/3)"));

        // Unknown total: no percentage lines, just the summary.
        let out = Shared::default();
        let mut p = Progress::plain_to("y", 0, Box::new(out.clone()));
        p.inc(10);
        p.finish();
        assert_eq!(out.lines().len(), 1);
    }

    #[test]
    fn quiet_and_bar_modes() {
        let mut q = Progress::new("q", 10, true);
        assert_eq!(q.mode(), ProgressMode::Quiet);
        q.inc(10);
        q.epoch_end(1, "x");
        q.finish();
        assert_eq!(q.position(), 10);
        // A bar drawing nowhere exercises the bar code path without a terminal.
        let mut b = Progress::from_sink(Sink::Bar(make_bar("b", 10, ProgressDrawTarget::hidden())), "b", 10);
        assert_eq!(b.mode(), ProgressMode::Bar);
        b.set_message("m");
        b.inc(4);
        b.println("line");
        assert_eq!(b.position(), 4);
        if let Sink::Bar(bar) = &b.sink {
            assert_eq!(bar.position(), 4);
            assert_eq!(bar.message(), "m");
        }
        b.finish();
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(6100)), "6.1s");
        assert_eq!(fmt_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3723)), "1h02m03s");
        assert_eq!(fmt_rate(10, Duration::ZERO), "-- steps/s");
        assert_eq!(fmt_rate(500, Duration::from_secs(2)), "250 steps/s");
    }
}
