//! The standard library, embedded in the binary so an installed `circ` has it.
//!
//! Input: the files of `stdlib/` at build time. Output: their texts by name, for `import`
//! and for `circ std`. Invariant: this list names every file in `stdlib/` (a test checks).

/// Every standard-library file: (name, text).
pub const FILES: &[(&str, &str)] =
    &[("fa.circ", include_str!("../../stdlib/fa.circ")), ("optim.circ", include_str!("../../stdlib/optim.circ"))];

/// The text of a standard-library file by name.
pub fn get(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
