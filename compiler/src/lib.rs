//! The circ compiler: `.circ` text to a checked circuit, a loop IR, and native code.
//!
//! Phases, one module each (see ARCHITECTURE.md): `syntax` (pest → AST), `resolve`
//! (AST → HIR: names, families, rules and fns expanded), `check` (index spaces, shapes,
//! the semantic rules), `locality` (the tier of every equation), `lower` (HIR → LIR),
//! `interp` (reference interpreter over LIR) and `codegen` (LIR → Cranelift JIT).

pub mod ast;
pub mod autodiff;
pub mod check;
pub mod codegen;
pub mod diag;
pub mod format;
pub mod frontend;
pub mod hir;
pub mod interp;
pub mod lir;
pub mod locality;
pub mod lower;
pub mod pipeline;
pub mod resolve;
pub mod stdlib;
pub mod syntax;
pub mod tangent;
