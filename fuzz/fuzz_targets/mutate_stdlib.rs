//! Structure-aware: the corpus starts from the programs of stdlib/ and examples/
//! (corpus/mutate_stdlib/seed_*, written from the repository at start when missing), and the
//! custom mutator edits them token by token (delete, duplicate, swap and move tokens, extreme
//! numbers, identifiers from the same program, other operators and keywords), so most mutants
//! parse and reach the resolver, the checker, locality and lowering.
#![no_main]

use libfuzzer_sys::{fuzz_crossover, fuzz_mutator, fuzz_target};

fuzz_target!(init: {
    // The seed corpus (corpus/mutate_stdlib/seed_*) is made from the repository when missing.
    let n = circ_fuzz::ensure_seed_corpus();
    if n > 0 {
        eprintln!("mutate_stdlib: wrote {n} seed programs to corpus/mutate_stdlib/");
    }
}, |data: &[u8]| {
    if std::env::var_os("CIRC_FUZZ_MUTATION_STATS").is_some() {
        print_mutation_stats();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        circ_fuzz::compile(&circ_fuzz::source_name(), text);
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| { circ_fuzz::mutate::mutate(data, size, max_size, seed) });

fuzz_crossover!(|a: &[u8], b: &[u8], out: &mut [u8], seed: u32| { circ_fuzz::mutate::crossover(a, b, out, seed) });

/// How far single mutants of the seed programs get (1000 per seed), then exit.
fn print_mutation_stats() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/mutate_stdlib");
    let mut seeds: Vec<String> = std::fs::read_dir(dir)
        .expect("the seed corpus")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed_"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    seeds.sort();
    let [n, parsed, skipped, clean, lowered] = circ_fuzz::mutate::mutation_stats(&seeds, 1000);
    eprintln!("mutants: {n}, parse: {parsed}, not compiled (new number > 1e5): {skipped}, check clean: {clean}, lowered: {lowered}");
    std::process::exit(0);
}
