//! Embeds every `stdlib/*.circ` file in the compiler, so an installed `circ` has its standard
//! library and adding a file to `stdlib/` needs no code change.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read at run time, not baked in with env!: checkouts of this repository at other paths
    // that share a target directory share this script's compiled binary, and a baked-in path
    // would embed another checkout's (or, if it is gone, an empty) standard library.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../stdlib");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.ends_with(".circ")).collect())
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("&[\n");
    for n in &names {
        let p = dir.join(n);
        println!("cargo:rerun-if-changed={}", p.display());
        let _ = writeln!(out, "    ({n:?}, include_str!({:?})),", p.display().to_string());
    }
    out.push(']');
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("stdlib_files.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
