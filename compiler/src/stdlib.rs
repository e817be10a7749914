//! The standard library, embedded in the binary so an installed `circ` has it.
//!
//! Input: every `stdlib/*.circ` at build time (listed by `build.rs`). Output: their texts by
//! name, for `import` and for `circ std`.

/// Every standard-library file: (name, text), sorted by name.
pub const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/stdlib_files.rs"));

/// The text of a standard-library file by name.
pub fn get(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
