//! The `circ` command line: check, run, inspect and format learning circuits.
//!
//! Input: command-line arguments. Output: diagnostics (miette, plain when not a terminal),
//! reports, run outputs. Exit codes: 0 success, 1 errors in the program or the run, 2 usage.
//! Invariant: never panics on user input; the work runs on a thread with a large stack so
//! pathological (but accepted) programs cannot overflow it.

/// Writes to stdout, ignoring a closed pipe (`circ ir FILE | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Like `out!`, with a newline.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

mod cli;
mod fmt;
mod run;

fn main() {
    // The compiler's recursion depth is bounded by the parser's limits; a generous stack
    // keeps that bound far from the OS default on every platform.
    let child = std::thread::Builder::new().stack_size(256 << 20).spawn(cli::main);
    let code = match child {
        Ok(h) => h.join().unwrap_or(101),
        Err(e) => {
            eprintln!("error: cannot start the main thread: {e}");
            1
        }
    };
    std::process::exit(code);
}
