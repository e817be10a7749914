//! From a checked circuit to something that runs: lowering, the run description the driver
//! needs, and the choice of engine (JIT or reference interpreter).
//!
//! Input: a checked [`Circuit`] and its sources. Output: a [`lir::Program`], a [`RunInfo`],
//! and a boxed [`Engine`]. Invariant: the JIT and the interpreter run the same program.
//! [`engine`] compiles with bounds checks when `CIRC_JIT_BOUNDS_CHECK=1`
//! ([`codegen::Options::from_env`]); [`engine_with`] takes the options explicitly.

use crate::codegen;
use crate::diag::{Diagnostic, Sources};
use crate::hir::{Circuit, LossKind};
use crate::interp::Interp;
use crate::lir::Program;
use crate::lower;
use crate::tangent;
use circ_runtime::driver::{Engine, Loss, RunInfo};
use circ_runtime::episodes::{MetaBuffers, MetaParam};
use circ_runtime::state::BufKind;

/// Which back end executes the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Jit,
    Interp,
}

/// Lowers a checked circuit for training with `batch` samples per step (adding the tangents
/// of meta-learning runs, then expanding `grad`).
pub fn lower(c: &Circuit, batch: usize) -> Result<Program, Vec<Diagnostic>> {
    let c = crate::tangent::expand(c)?;
    let c = crate::autodiff::expand(&c)?;
    lower::lower(&c, batch)
}

/// What the driver needs to know about a program.
pub fn run_info(p: &Program, sources: &Sources) -> RunInfo {
    RunInfo {
        circuit: p.name.clone(),
        input: p.input,
        target: p.target,
        readout: p.readout,
        monitors: p.monitors.iter().map(|m| (m.name.clone(), m.stat.clone())).collect(),
        origins: p.origins.iter().map(|o| (o.buf, o.what.clone(), sources.location(o.span))).collect(),
        meta: meta_buffers(p),
    }
}

/// The buffers of a program compiled for meta-learning: the meta-params in declaration order
/// (the tangent pass numbers them so), each with its meta-loss tangent.
fn meta_buffers(p: &Program) -> Option<MetaBuffers> {
    let find = |name: &str| p.buffers.iter().position(|b| b.name == name);
    let loss = find(tangent::META_LOSS)?;
    let params = p
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.kind == BufKind::Meta)
        .enumerate()
        .map(|(r, (buf, b))| {
            // Absent when the experiment meta-learns by evolution strategies.
            let loss_tangent = find(&tangent::tangent_name(r, tangent::META_LOSS));
            MetaParam { name: b.name.clone(), buf, loss_tangent }
        })
        .collect();
    Some(MetaBuffers { params, loss, reset: p.episode_reset.clone() })
}

pub fn loss(c: &Circuit) -> Loss {
    match c.experiment.loss {
        LossKind::CrossEntropy => Loss::CrossEntropy,
        LossKind::Mse => Loss::Mse,
    }
}

/// Builds the engine for a program (the JIT with bounds checks if the environment asks for
/// them: [`codegen::BOUNDS_CHECK_ENV`]).
pub fn engine(p: Program, kind: EngineKind) -> Result<Box<dyn Engine>, String> {
    engine_with(p, kind, codegen::Options::from_env())
}

/// Builds the engine for a program; `opts` apply to the JIT.
pub fn engine_with(p: Program, kind: EngineKind, opts: codegen::Options) -> Result<Box<dyn Engine>, String> {
    Ok(match kind {
        EngineKind::Jit => Box::new(codegen::compile_with(&p, opts)?),
        EngineKind::Interp => {
            p.validate().map_err(|e| format!("internal error: invalid LIR: {e}"))?;
            Box::new(Interp::new(p))
        }
    })
}
