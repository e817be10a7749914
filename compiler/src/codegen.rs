//! Code generation: LIR entries to native code with Cranelift.
//!
//! Input: a validated [`lir::Program`]. Output: a [`Jit`] holding one compiled function per
//! entry (`init`, `train`, `eval`, `monitor`), callable as an [`Engine`], and the CLIF text of
//! each for `circ ir --stage clif`.
//! Invariants:
//! - Every entry has the signature `fn(bufs: *const *mut T, nb: i64, ctx: *const StepCtx)`;
//!   buffer base pointers are loaded once at entry. Every address is computed from loop
//!   indices bounded by the shapes `Program::validate` checked, so all loads and stores stay in
//!   their buffers (the driver never passes `nb` above the state's `max_batch`).
//! - Elementwise loops and synapse passes are generated code: 128-bit vectors (`F32X4`,
//!   `F64X2`; Cranelift 0.135 cannot compile wider ones) with a scalar tail. Products call the
//!   `gemm` crate through `circ_runtime::abi`; transcendental functions call
//!   `circ_runtime::math`, which the interpreter also uses, so both agree on them exactly.
//! - Loops are emitted exit-first (`brif done, exit, body`): with the other successor order
//!   Cranelift 0.135's egraph pass stops hoisting loop-invariant values (measured in
//!   ../shared/notes/cranelift-kernels.md). Loads of buffers a kernel does not write are
//!   flagged `readonly + can_move + notrap` so they can be hoisted and folded.
//! - Bounds-check mode ([`Options::bounds_check`], `--jit-bounds-check`, a debug mode; off by
//!   default, and then the generated code is exactly the unchecked code): the entry's `bufs`
//!   array then holds the `n` base pointers and the `n` buffer lengths (elements, from the
//!   state's allocations). Every load and store (first and last lane; both ends of a gather),
//!   every zero-skip list entry, and the extents of every product call and copy are compared
//!   with the length before the access; a violation branches to a cold block of its own that
//!   records it in the [`Jit`]'s [`FaultSlot`] ([`abi::circ_bounds_fault`]; the slot's address
//!   is a constant) and returns, so nothing outside a buffer is touched. Loads lose `can_move`
//!   there, so none is hoisted above its check; bases and lengths are loaded where they are
//!   used, so that few values live across an entry (compile time). [`Jit`] turns the recorded
//!   fault into a [`BoundsFault`] (`Engine::take_fault`).

use crate::ast::{BinOp, UnOp};
use crate::hir::{Func, RandKind};
use crate::lir::{Access, BufId, Entry, KExpr, Kernel, Program, RedOp, Store};
use circ_runtime::abi::{self, BoundsFault, FaultSlot, StepCtx, Touch};
use circ_runtime::driver::{Engine, EntryKind};
use circ_runtime::math;
use circ_runtime::state::{Precision, State};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{self, types, AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use std::collections::{HashMap, HashSet};

type EntryFn = unsafe extern "C" fn(*const *mut u8, i64, *const StepCtx);

/// How to compile a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep the disassembly of every entry (`Jit::asm`).
    pub asm: bool,
    /// Check every memory access against its buffer's length at run time (a debug mode; see
    /// the module header).
    pub bounds_check: bool,
}

/// The environment variable that turns on bounds checks where engines are built by
/// [`crate::pipeline::engine`] (the CLI and most tests): `1`, `true`, `yes` or `on`.
pub const BOUNDS_CHECK_ENV: &str = "CIRC_JIT_BOUNDS_CHECK";

impl Options {
    /// Default options, with bounds checks if [`BOUNDS_CHECK_ENV`] asks for them.
    pub fn from_env() -> Options {
        let on =
            std::env::var(BOUNDS_CHECK_ENV).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Options { asm: false, bounds_check: on }
    }
}

/// Compiled code of one program.
pub struct Jit {
    module: Option<JITModule>,
    fns: [EntryFn; 4],
    /// CLIF of every entry, before optimisation.
    pub clif: String,
    /// Disassembly of every entry, when requested.
    pub asm: String,
    /// Compiled with bounds checks: the entries take lengths and a fault slot too.
    bounds_check: bool,
    /// The program's buffer count (the layout of the checked entries' `bufs` array).
    nbufs: usize,
    /// Every kernel, numbered as the checks report them.
    kernels: Vec<String>,
    /// Where checked code records a fault (its address is compiled in).
    slot: Box<FaultSlot>,
    /// The first fault caught and not yet taken.
    fault: Option<BoundsFault>,
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: `fns` point into this module's code; they are dropped with `self` and
            // never called after this point.
            unsafe { m.free_memory() };
        }
    }
}

impl Engine for Jit {
    fn run(&mut self, entry: EntryKind, state: &mut State, nb: usize, ctx: &StepCtx) {
        let f = self.fns[match entry {
            EntryKind::Init => 0,
            EntryKind::Train => 1,
            EntryKind::Eval => 2,
            EntryKind::Monitor => 3,
        }];
        // The generated code indexes batch rows below `nb`: never more than were allocated.
        let nb = nb.min(state.max_batch);
        if self.bounds_check {
            return self.run_checked(f, state, nb, ctx);
        }
        let ptrs = state.pointers();
        // SAFETY: `f` was compiled from a validated program whose buffer shapes are exactly
        // `state.specs` (the state was built from the same program), `ptrs` holds one live
        // pointer per buffer with `max_batch ≥ nb` rows, and `ctx` outlives the call. The
        // code only touches those buffers within their shapes and calls `extern "C"` helpers
        // that do not unwind.
        unsafe { f(ptrs.as_ptr(), nb as i64, ctx as *const StepCtx) };
    }

    fn take_fault(&mut self) -> Option<BoundsFault> {
        self.fault.take()
    }
}

impl Jit {
    /// Runs a bounds-checked entry: `bufs` is [pointers; lengths] (module header).
    fn run_checked(&mut self, f: EntryFn, state: &mut State, nb: usize, ctx: &StepCtx) {
        let n = self.nbufs;
        // The length the code checks against: the buffer's shape, never more than allocated
        // (a buffer the state lacks has length 0, so every access to it faults).
        let lens: Vec<usize> = state.lens().iter().zip(&state.specs).map(|(&len, spec)| len.min(spec.len(state.max_batch))).collect();
        let ptrs = state.pointers();
        let mut args: Vec<*mut u8> = Vec::with_capacity(2 * n);
        args.extend((0..n).map(|b| ptrs.get(b).copied().unwrap_or(std::ptr::null_mut())));
        args.extend((0..n).map(|b| std::ptr::without_provenance_mut(lens.get(b).copied().unwrap_or(0))));
        self.slot.clear();
        // SAFETY: `f` was compiled in bounds-check mode for `n` buffers, so it reads exactly
        // the `2n` words of `args`; every buffer access and product call it makes is first
        // compared with the length in `args`, which never exceeds the live allocation behind
        // the pointer next to it, and skipped (the entry returns) when out of bounds. The fault
        // slot whose address it holds is `self.slot`, alive as long as the code; `ctx` outlives
        // the call; the helpers it calls do not unwind.
        unsafe { f(args.as_ptr(), nb as i64, ctx as *const StepCtx) };
        if let Some(raw) = self.slot.get() {
            if self.fault.is_none() {
                let names: Vec<String> = state.specs.iter().map(|s| s.name.clone()).collect();
                self.fault = Some(BoundsFault::new(raw, &names, &self.kernels));
            }
        }
    }
}

/// Compiles every entry of a program. `want_asm` also keeps the disassembly.
pub fn compile(p: &Program, want_asm: bool) -> Result<Jit, String> {
    compile_with(p, Options { asm: want_asm, bounds_check: false })
}

/// Compiles every entry of a validated program.
pub fn compile_with(p: &Program, opts: Options) -> Result<Jit, String> {
    p.validate().map_err(|e| format!("internal error: invalid LIR: {e}"))?;
    build(p, opts)
}

/// Compiles a program without [`Program::validate`], for tests of the bounds checks
/// themselves: only in bounds-check mode (the checks then stand in for validation), and only
/// if every buffer the kernels name exists.
pub fn compile_unvalidated(p: &Program, opts: Options) -> Result<Jit, String> {
    if !opts.bounds_check {
        return Err("an unvalidated program compiles only with bounds checks".into());
    }
    let mut used = HashSet::new();
    for e in [&p.init, &p.train, &p.eval, &p.monitor] {
        e.kernels.iter().for_each(|k| uses_bufs(k, &mut used));
    }
    if let Some(b) = used.iter().find(|&&b| b >= p.buffers.len()) {
        return Err(format!("buffer {b} does not exist"));
    }
    build(p, opts)
}

fn build(p: &Program, opts: Options) -> Result<Jit, String> {
    let want_asm = opts.asm;
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| e.to_string())?;
    flags.set("is_pic", "false").map_err(|e| e.to_string())?;
    let size: usize = [&p.init, &p.train, &p.eval, &p.monitor].iter().map(|e| lir_nodes(&e.kernels)).sum();
    if opts.bounds_check && size > SINGLE_PASS_NODES {
        // Checked code has several times the blocks, and the backtracking allocator is
        // superlinear in them: on meta_pool (10 000 nodes) it takes 7 s, 4.6x the unchecked
        // compile; the single-pass one 3 s, for code about 3x slower.
        flags.set("regalloc_algorithm", "single_pass").map_err(|e| e.to_string())?;
    }
    let isa_builder = cranelift_native::builder().map_err(|e| format!("this machine is not supported by Cranelift: {e}"))?;
    let isa = isa_builder.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in helper_symbols() {
        jb.symbol(name, ptr);
    }
    let mut module = JITModule::new(jb);
    let helpers = declare_helpers(&mut module, p.precision, opts.bounds_check).map_err(|e| e.to_string())?;
    let mut clif = String::new();
    let mut asm = String::new();
    let mut ids = Vec::new();
    let mut kernels = Vec::new();
    // Its address is baked into bounds-checked code: it lives (boxed, unmoved) with the code.
    let slot = Box::new(FaultSlot::default());
    let slot_addr = &*slot as *const FaultSlot as usize as i64;
    for (name, e) in [("init", &p.init), ("train", &p.train), ("eval", &p.eval), ("monitor", &p.monitor)] {
        let first = kernels.len();
        label_kernels(p, name, &e.kernels, "", first, &mut kernels);
        let id = compile_entry(&mut module, p, e, name, &helpers, opts, first, slot_addr, &mut clif, want_asm.then_some(&mut asm))?;
        ids.push(id);
    }
    module.finalize_definitions().map_err(|e| e.to_string())?;
    let mut fns: Vec<EntryFn> = Vec::new();
    for id in ids {
        let ptr = module.get_finalized_function(id);
        // SAFETY: the function was defined with exactly the `EntryFn` signature
        // (pointer, i64, pointer) -> () in the host calling convention.
        fns.push(unsafe { std::mem::transmute::<*const u8, EntryFn>(ptr) });
    }
    Ok(Jit {
        module: Some(module),
        fns: [fns[0], fns[1], fns[2], fns[3]],
        clif,
        asm,
        bounds_check: opts.bounds_check,
        nbufs: p.buffers.len(),
        kernels,
        slot,
        fault: None,
    })
}

/// Above this many LIR nodes ([`lir_nodes`]) bounds-checked code is register-allocated in a
/// single pass (about 8x the largest corpus program other than meta_pool, which has 10 000).
const SINGLE_PASS_NODES: usize = 4096;

/// Kernels and expression nodes of a kernel list: a measure of how much code it becomes.
fn lir_nodes(ks: &[Kernel]) -> usize {
    let mut n = 0;
    for k in ks {
        n += 1;
        let mut count = |e: &KExpr| e.walk(&mut |_| n += 1);
        match k {
            Kernel::Map { stores, .. } | Kernel::SynMap { stores, .. } => {
                for st in stores {
                    count(&st.value);
                    if let Some(g) = &st.guard {
                        count(g);
                    }
                }
            }
            Kernel::Reduce { value, .. } | Kernel::SynReduce { value, .. } => count(value),
            Kernel::Loop { body, .. } | Kernel::Every { body, .. } => n += lir_nodes(body),
            _ => {}
        }
    }
    n
}

/// Describes every kernel of an entry in the order `Gen::kernel` numbers them (pre-order;
/// the entry's first kernel is `out[first]`, "train kernel 0").
fn label_kernels(p: &Program, entry: &str, ks: &[Kernel], within: &str, first: usize, out: &mut Vec<String>) {
    for k in ks {
        let text = crate::lir::kernel_summary(p, k);
        out.push(format!("{entry} kernel {}{within}: {text}", out.len() - first));
        if let Kernel::Loop { body, .. } | Kernel::Every { body, .. } = k {
            label_kernels(p, entry, body, &format!(" (in `{text}`)"), first, out);
        }
    }
}

fn helper_symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("circ_exp_f32", math::circ_exp_f32 as *const u8),
        ("circ_exp_f64", math::circ_exp_f64 as *const u8),
        ("circ_log_f32", math::circ_log_f32 as *const u8),
        ("circ_log_f64", math::circ_log_f64 as *const u8),
        ("circ_tanh_f32", math::circ_tanh_f32 as *const u8),
        ("circ_tanh_f64", math::circ_tanh_f64 as *const u8),
        ("circ_sigmoid_f32", math::circ_sigmoid_f32 as *const u8),
        ("circ_sigmoid_f64", math::circ_sigmoid_f64 as *const u8),
        ("circ_gelu_f32", math::circ_gelu_f32 as *const u8),
        ("circ_gelu_f64", math::circ_gelu_f64 as *const u8),
        ("circ_sin_f32", math::circ_sin_f32 as *const u8),
        ("circ_sin_f64", math::circ_sin_f64 as *const u8),
        ("circ_cos_f32", math::circ_cos_f32 as *const u8),
        ("circ_cos_f64", math::circ_cos_f64 as *const u8),
        ("circ_softplus_f32", math::circ_softplus_f32 as *const u8),
        ("circ_softplus_f64", math::circ_softplus_f64 as *const u8),
        ("circ_pow_f32", math::circ_pow_f32 as *const u8),
        ("circ_pow_f64", math::circ_pow_f64 as *const u8),
        ("circ_fmod_f32", math::circ_fmod_f32 as *const u8),
        ("circ_fmod_f64", math::circ_fmod_f64 as *const u8),
        ("circ_rand_uniform", math::circ_rand_uniform as *const u8),
        ("circ_rand_normal", math::circ_rand_normal as *const u8),
        ("circ_matmul_f32", abi::circ_matmul_f32 as *const u8),
        ("circ_matmul_f64", abi::circ_matmul_f64 as *const u8),
        ("circ_outer_f32", abi::circ_outer_f32 as *const u8),
        ("circ_outer_f64", abi::circ_outer_f64 as *const u8),
        ("circ_batch_sum_f32", abi::circ_batch_sum_f32 as *const u8),
        ("circ_batch_sum_f64", abi::circ_batch_sum_f64 as *const u8),
        ("circ_par_rows", abi::circ_par_rows as *const u8),
        ("circ_bounds_fault", abi::circ_bounds_fault as *const u8),
    ]
}

/// Imported helper functions, by their role (the precision picks `_f32` or `_f64`).
struct Helpers {
    ids: HashMap<&'static str, FuncId>,
}

fn declare_helpers(m: &mut JITModule, prec: Precision, bounds_check: bool) -> Result<Helpers, cranelift_module::ModuleError> {
    let (ty, suffix) = match prec {
        Precision::F32 => (types::F32, "f32"),
        Precision::F64 => (types::F64, "f64"),
    };
    let mut ids = HashMap::new();
    let ptr = m.target_config().pointer_type();
    let mut declare = |m: &mut JITModule,
                       role: &'static str,
                       params: &[Type],
                       ret: Option<Type>,
                       generic: bool|
     -> Result<(), cranelift_module::ModuleError> {
        let mut sig = m.make_signature();
        for p in params {
            sig.params.push(AbiParam::new(*p));
        }
        if let Some(r) = ret {
            sig.returns.push(AbiParam::new(r));
        }
        let name = if generic { format!("circ_{role}_{suffix}") } else { format!("circ_{role}") };
        let id = m.declare_function(&name, Linkage::Import, &sig)?;
        ids.insert(role, id);
        Ok(())
    };
    for role in ["exp", "log", "tanh", "sigmoid", "gelu", "sin", "cos"] {
        declare(m, role, &[ty], Some(ty), true)?;
    }
    for role in ["softplus", "pow", "fmod"] {
        declare(m, role, &[ty, ty], Some(ty), true)?;
    }
    declare(m, "rand_uniform", &[types::I64; 4], Some(types::F64), false)?;
    declare(m, "rand_normal", &[types::I64; 4], Some(types::F64), false)?;
    let i = types::I64;
    declare(m, "matmul", &[ptr, ptr, ptr, i, i, i, i, i], None, true)?;
    declare(m, "outer", &[ptr, ptr, ptr, i, i, i, ty, i], None, true)?;
    declare(m, "batch_sum", &[ptr, ptr, i, i, ty, i], None, true)?;
    declare(m, "par_rows", &[ptr, ptr, i, ptr, i], None, false)?;
    if bounds_check {
        // Only then: declaring it would renumber the functions of unchecked code.
        declare(m, "bounds_fault", &[ptr, i, i, i, i, i, i], None, false)?;
    }
    Ok(Helpers { ids })
}

fn compile_entry(
    module: &mut JITModule,
    p: &Program,
    e: &Entry,
    name: &str,
    helpers: &Helpers,
    opts: Options,
    first_kernel: usize,
    slot_addr: i64,
    clif: &mut String,
    asm: Option<&mut String>,
) -> Result<FuncId, String> {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(ptr));
    let id = module.declare_function(&format!("circ_entry_{name}"), Linkage::Local, &sig).map_err(|e| e.to_string())?;
    let mut ctx = module.make_context();
    ctx.func = ir::Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
    let mut fctx = FunctionBuilderContext::new();
    {
        let b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let mut g = Gen::new(b, module, p, helpers, ptr, name, opts.bounds_check);
        g.next_kernel = first_kernel as i64;
        g.slot_addr = slot_addr;
        g.prologue(e);
        for k in &e.kernels {
            g.kernel(k);
        }
        g.b.ins().return_(&[]);
        g.b.seal_all_blocks();
        let cfg = g.module.target_config();
        g.b.finalize(cfg);
        if let Some(err) = g.error.take() {
            return Err(err);
        }
        clif.push_str(&g.sub_clif);
    }
    clif.push_str(&format!("; entry {name}\n{}\n", ctx.func.display()));
    if asm.is_some() {
        ctx.set_disasm(true);
    }
    module.define_function(id, &mut ctx).map_err(|e| format!("Cranelift could not compile entry `{name}`: {e:?}"))?;
    if let Some(a) = asm {
        if let Some(code) = ctx.compiled_code().and_then(|c| c.vcode.clone()) {
            a.push_str(&format!("; entry {name}\n{code}\n"));
        }
    }
    module.clear_context(&mut ctx);
    Ok(id)
}

/// Where in a loop nest an expression is evaluated.
#[derive(Clone, Copy)]
enum At {
    /// Map over (b, i) with `cols` columns.
    Map { b: Value, i: Value, cols: usize },
    /// SynMap over (i, j) of `rows × cols`, batch row `bb`.
    Syn { i: Value, j: Value, bb: Value, rows: usize, cols: usize },
}

struct Gen<'a, 'm> {
    b: FunctionBuilder<'a>,
    module: &'m mut JITModule,
    helpers: &'m Helpers,
    refs: HashMap<&'static str, FuncRef>,
    ptr: Type,
    ty: Type,
    vty: Type,
    lanes: u8,
    es: i64,
    bases: HashMap<BufId, Value>,
    nb: Value,
    seed: Value,
    step: Value,
    /// The loop-wide iteration (the source's `t / dt`, random streams).
    iter: Variable,
    /// The history index: the innermost loop's iteration, or the segment in `Segments`.
    hist: Variable,
    /// Inside `Segments`: the segment's first iteration and its number of iterations.
    segment: Option<(Value, Value)>,
    inv_nb: Value,
    /// Buffers some kernel of this entry writes. Only the others are loaded as read-only
    /// (`readonly + can_move`): that flag lets Cranelift hoist or merge a load anywhere in the
    /// function, which would read a stale value of a buffer another kernel (or a later
    /// iteration of a time loop) rewrites.
    written: HashSet<BufId>,
    /// History buffers (`Rows::History`): stores and loads go to the current iteration's rows.
    histories: HashSet<BufId>,
    ctx_ptr: Value,
    bufs_ptr: Value,
    /// Subexpressions already evaluated for the current point (hoisted out of a column loop),
    /// by address.
    pinned: HashMap<*const KExpr, Value>,
    p: &'m Program,
    /// The entry's name, and how many row-range functions were split off it (their CLIF).
    name: String,
    subs: usize,
    sub_clif: String,
    /// The first failure to compile a split-off function.
    error: Option<String>,
    /// Bounds-check mode, and the address of the `Jit`'s fault slot.
    check: bool,
    slot_addr: i64,
    /// The number of the kernel being compiled, and of the next one (see `label_kernels`).
    cur_kernel: i64,
    next_kernel: i64,
}

/// Every buffer a kernel (or the kernels inside it) writes.
fn writes_bufs(k: &Kernel, out: &mut HashSet<BufId>) {
    match k {
        Kernel::Map { stores, .. } | Kernel::SynMap { stores, .. } => out.extend(stores.iter().map(|s| s.out)),
        Kernel::Reduce { out: o, .. }
        | Kernel::SynReduce { out: o, .. }
        | Kernel::MatMul { out: o, .. }
        | Kernel::Outer { out: o, .. }
        | Kernel::BatchSum { out: o, .. } => {
            out.insert(*o);
        }
        Kernel::Copy { dst, .. } => {
            out.insert(*dst);
        }
        Kernel::Loop { body, .. } | Kernel::Segments { body, .. } | Kernel::Every { body, .. } => {
            body.iter().for_each(|k| writes_bufs(k, out))
        }
    }
}

fn uses_bufs(k: &Kernel, out: &mut HashSet<BufId>) {
    fn loads(x: &KExpr, out: &mut HashSet<BufId>) {
        x.walk(&mut |n| {
            if let KExpr::Load(b, _) = n {
                out.insert(*b);
            }
        })
    }
    match k {
        Kernel::Map { stores, .. } | Kernel::SynMap { stores, .. } => {
            for st in stores {
                out.insert(st.out);
                loads(&st.value, out);
                if let Some(g) = &st.guard {
                    loads(g, out);
                }
            }
        }
        Kernel::Reduce { out: o, value, .. } | Kernel::SynReduce { out: o, value, .. } => {
            out.insert(*o);
            loads(value, out);
        }
        Kernel::MatMul { out: o, x, w, .. } => out.extend([*o, *x, *w]),
        Kernel::Outer { out: o, p, q, .. } => out.extend([*o, *p, *q]),
        Kernel::BatchSum { out: o, src, .. } => out.extend([*o, *src]),
        Kernel::Copy { dst, src, .. } => out.extend([*dst, *src]),
        Kernel::Loop { body, .. } | Kernel::Segments { body, .. } | Kernel::Every { body, .. } => {
            body.iter().for_each(|k| uses_bufs(k, out))
        }
    }
}

impl<'a, 'm> Gen<'a, 'm> {
    fn new(
        b: FunctionBuilder<'a>,
        module: &'m mut JITModule,
        p: &'m Program,
        helpers: &'m Helpers,
        ptr: Type,
        name: &str,
        check: bool,
    ) -> Self {
        let (ty, vty, lanes, es) = match p.precision {
            Precision::F32 => (types::F32, types::F32X4, 4, 4),
            Precision::F64 => (types::F64, types::F64X2, 2, 8),
        };
        let dummy = Value::from_u32(0);
        Gen {
            b,
            module,
            helpers,
            refs: HashMap::new(),
            ptr,
            ty,
            vty,
            lanes,
            es,
            bases: HashMap::new(),
            nb: dummy,
            seed: dummy,
            step: dummy,
            iter: Variable::from_u32(0),
            hist: Variable::from_u32(0),
            segment: None,
            inv_nb: dummy,
            written: HashSet::new(),
            histories: p
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| matches!(b.rows, circ_runtime::state::Rows::History(_)))
                .map(|(i, _)| i)
                .collect(),
            ctx_ptr: dummy,
            bufs_ptr: dummy,
            pinned: HashMap::new(),
            p,
            name: name.to_string(),
            subs: 0,
            sub_clif: String::new(),
            error: None,
            check,
            slot_addr: 0,
            cur_kernel: 0,
            next_kernel: 0,
        }
    }

    fn ro() -> MemFlagsData {
        MemFlagsData::trusted().with_readonly().with_can_move()
    }

    /// Flags of a load from a buffer nothing writes during the load's kernel: `ro()`, except
    /// in bounds-check mode, where a load must not move above its check.
    fn ro_load(&self) -> MemFlagsData {
        if self.check {
            MemFlagsData::trusted().with_readonly()
        } else {
            Self::ro()
        }
    }

    /// Loads the arguments, the buffer bases and the step context once, in the entry block.
    fn prologue(&mut self, e: &Entry) {
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        let params = self.b.block_params(entry).to_vec();
        self.bufs_ptr = params[0];
        self.nb = params[1];
        self.ctx_ptr = params[2];
        let mut used = HashSet::new();
        for k in &e.kernels {
            uses_bufs(k, &mut used);
            writes_bufs(k, &mut self.written);
        }
        let mut used: Vec<BufId> = used.into_iter().collect();
        used.sort_unstable();
        // Bounds-check mode loads them where they are used (`base`).
        for &bid in used.iter().filter(|_| !self.check) {
            let off = (bid * self.ptr.bytes() as usize) as i32;
            let v = self.b.ins().load(self.ptr, Self::ro(), self.bufs_ptr, off);
            self.bases.insert(bid, v);
        }
        // StepCtx is #[repr(C)] { seed: u64, step: u64, iter: u64 }.
        self.seed = self.b.ins().load(types::I64, Self::ro(), self.ctx_ptr, 0);
        self.step = self.b.ins().load(types::I64, Self::ro(), self.ctx_ptr, 8);
        let iter0 = self.b.ins().load(types::I64, Self::ro(), self.ctx_ptr, 16);
        self.iter = self.b.declare_var(types::I64);
        self.b.def_var(self.iter, iter0);
        self.hist = self.b.declare_var(types::I64);
        let zero = self.iconst(0);
        self.b.def_var(self.hist, zero);
        let nbf = if self.ty == types::F32 {
            self.b.ins().fcvt_from_sint(types::F32, self.nb)
        } else {
            self.b.ins().fcvt_from_sint(types::F64, self.nb)
        };
        let one = self.fconst(1.0);
        self.inv_nb = self.b.ins().fdiv(one, nbf);
    }

    fn fconst(&mut self, c: f64) -> Value {
        if self.ty == types::F32 {
            self.b.ins().f32const(c as f32)
        } else {
            self.b.ins().f64const(c)
        }
    }

    fn splat_const(&mut self, c: f64, lanes: u8) -> Value {
        let s = self.fconst(c);
        self.splat(s, lanes)
    }

    fn splat(&mut self, v: Value, lanes: u8) -> Value {
        if lanes == 1 {
            v
        } else {
            self.b.ins().splat(self.vty, v)
        }
    }

    fn func_ref(&mut self, role: &'static str) -> FuncRef {
        if let Some(r) = self.refs.get(role) {
            return *r;
        }
        let id = self.helpers.ids[role];
        let r = self.module.declare_func_in_func(id, self.b.func);
        self.refs.insert(role, r);
        r
    }

    fn call(&mut self, role: &'static str, args: &[Value]) -> Option<Value> {
        let r = self.func_ref(role);
        let inst = self.b.ins().call(r, args);
        self.b.inst_results(inst).first().copied()
    }

    /// Emits `for v in start..end step` (exit-first) and calls `body` with the index.
    fn for_loop(&mut self, start: Value, end: Value, step: i64, body: &mut dyn FnMut(&mut Self, Value)) {
        let header = self.b.create_block();
        let body_blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let done = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, i, end);
        // Exit first: see the module header.
        self.b.ins().brif(done, exit, &[], body_blk, &[]);
        self.b.switch_to_block(body_blk);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
    }

    /// Rows of a product over a history of `repeat` iterations: `repeat · nb`, or in a
    /// segment `min(repeat, its iterations) · nb`.
    fn history_rows(&mut self, repeat: usize) -> Value {
        let repeat = self.iconst(repeat as i64);
        let iters = match self.segment {
            Some((_, n)) => self.b.ins().umin(repeat, n),
            None => repeat,
        };
        self.b.ins().imul(self.nb, iters)
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// Address of element `idx` (in elements) of buffer `b`.
    fn addr(&mut self, buf: BufId, idx: Value) -> Value {
        let base = self.base(buf);
        let bytes = self.b.ins().imul_imm_s(idx, self.es);
        self.b.ins().iadd(base, bytes)
    }

    /// Bounds-check mode: continues where `ok` (i8) holds; elsewhere records a fault (elements
    /// `first ..= last` of `code`, a buffer id or a `LIST_*`, of length `len`) and returns.
    /// Every check has its own cold block: one shared block would need parameters, and merging
    /// thousands of incoming values into them makes register allocation crawl.
    fn guard_ok(&mut self, ok: Value, code: i64, first: Value, last: Value, len: Value, touch: Touch) {
        let cont = self.b.create_block();
        let fault = self.b.create_block();
        self.b.set_cold_block(fault);
        self.b.ins().brif(ok, cont, &[], fault, &[]);
        // Both have a single, known predecessor: sealing now keeps variable lookups local.
        self.b.seal_block(cont);
        self.b.seal_block(fault);
        self.b.switch_to_block(fault);
        let k = self.iconst(self.cur_kernel);
        let c = self.iconst(code);
        let t = self.iconst(touch as i64);
        // A constant: a value live into every cold block (they follow the hot code) would live
        // across the whole entry.
        let slot = self.b.ins().iconst(self.ptr, self.slot_addr);
        self.call("bounds_fault", &[slot, k, c, first, last, len, t]);
        self.b.ins().return_(&[]);
        self.b.switch_to_block(cont);
    }

    /// The base pointer of `buf`: loaded once in the prologue, or in bounds-check mode where it
    /// is used (like `len`, so that few values live across the entry).
    fn base(&mut self, buf: BufId) -> Value {
        if !self.check {
            return self.bases[&buf];
        }
        let off = (buf * self.ptr.bytes() as usize) as i32;
        self.b.ins().load(self.ptr, MemFlagsData::trusted(), self.bufs_ptr, off)
    }

    /// Bounds-check mode: the length of `buf` (elements), from the `bufs` array, after the n
    /// base pointers. Loaded where it is needed, not once: thousands of values live across a
    /// whole entry make register allocation crawl (not `readonly` either, for the same reason:
    /// alias analysis would merge the loads).
    fn len(&mut self, buf: BufId) -> Value {
        let off = ((self.p.buffers.len() + buf) * self.ptr.bytes() as usize) as i32;
        self.b.ins().load(types::I64, MemFlagsData::trusted(), self.bufs_ptr, off)
    }

    /// Address of the elements `idx .. idx + n` of `buf`; in bounds-check mode, checked
    /// (unsigned, so a negative index fails too) against the buffer's length first.
    fn access(&mut self, buf: BufId, idx: Value, n: i64, touch: Touch) -> Value {
        if self.check {
            let len = self.len(buf);
            let a = self.b.ins().icmp(IntCC::UnsignedLessThan, idx, len);
            let (last, ok) = if n == 1 {
                (idx, a)
            } else {
                let last = self.b.ins().iadd_imm_s(idx, n - 1);
                let b = self.b.ins().icmp(IntCC::UnsignedLessThan, last, len);
                (last, self.b.ins().band(a, b))
            };
            self.guard_ok(ok, buf as i64, idx, last, len, touch);
        }
        self.addr(buf, idx)
    }

    /// Bounds-check mode: a product call or copy touches the elements `0 .. extent` of `buf`.
    fn guard_extent(&mut self, buf: BufId, extent: Value, touch: Touch) {
        if !self.check {
            return;
        }
        let len = self.len(buf);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThanOrEqual, extent, len);
        let zero = self.iconst(0);
        let last = self.b.ins().iadd_imm_s(extent, -1);
        self.guard_ok(ok, buf as i64, zero, last, len, touch);
    }

    /// Bounds-check mode: entry `k` of a zero-skip list (`code`) of `cap` entries.
    fn guard_list(&mut self, code: i64, k: Value, cap: usize) {
        if !self.check {
            return;
        }
        let len = self.iconst(cap as i64);
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, k, len);
        self.guard_ok(ok, code, k, k, len, Touch::List);
    }

    fn flags(&self, buf: BufId) -> MemFlagsData {
        if self.written.contains(&buf) {
            MemFlagsData::trusted()
        } else {
            self.ro_load()
        }
    }

    /// Element index of an access at a point (first lane).
    fn index(&mut self, a: Access, at: At) -> Option<Value> {
        Some(match (at, a) {
            (_, Access::Scalar) => self.iconst(0),
            (At::Map { b, i, cols }, Access::Elem) => {
                let r = self.b.ins().imul_imm_s(b, cols as i64);
                self.b.ins().iadd(r, i)
            }
            (At::Map { b, i, cols }, Access::Hist) => {
                // Row (h · nb + b) of the history: the value recorded at this iteration (or
                // for this segment).
                let it = self.b.use_var(self.hist);
                let r = self.b.ins().imul(it, self.nb);
                let r = self.b.ins().iadd(r, b);
                let r = self.b.ins().imul_imm_s(r, cols as i64);
                self.b.ins().iadd(r, i)
            }
            (At::Map { b, .. }, Access::Sample) => b,
            (At::Map { i, .. }, Access::Unit) => i,
            (At::Syn { i, j, cols, .. }, Access::Elem) => {
                let r = self.b.ins().imul_imm_s(i, cols as i64);
                self.b.ins().iadd(r, j)
            }
            (At::Syn { bb, .. }, Access::Sample) => bb,
            (At::Syn { i, bb, rows, .. }, Access::Post) => {
                let r = self.b.ins().imul_imm_s(bb, rows as i64);
                self.b.ins().iadd(r, i)
            }
            (At::Syn { j, bb, cols, .. }, Access::Pre) => {
                let r = self.b.ins().imul_imm_s(bb, cols as i64);
                self.b.ins().iadd(r, j)
            }
            (At::Syn { i, j, rows, .. }, Access::Trans) => {
                let r = self.b.ins().imul_imm_s(j, rows as i64);
                self.b.ins().iadd(r, i)
            }
            _ => return None,
        })
    }

    /// Whether an access varies along the innermost (vectorised) loop index.
    fn contiguous(a: Access, at: At) -> bool {
        matches!((at, a), (At::Map { .. }, Access::Elem | Access::Unit | Access::Hist) | (At::Syn { .. }, Access::Elem | Access::Pre))
    }

    fn load(&mut self, buf: BufId, a: Access, at: At, lanes: u8) -> Value {
        let flags = self.flags(buf);
        let Some(idx) = self.index(a, at) else {
            // Program::validate rejects such accesses; keep codegen total anyway.
            return self.splat_const(0.0, lanes);
        };
        // Elements the load touches, from `idx`: the lanes of a vector, both ends of a gather.
        let span = match (lanes, at) {
            (1, _) => 1,
            _ if Self::contiguous(a, at) => lanes as i64,
            (_, At::Syn { rows, .. }) if a == Access::Trans => (lanes as i64 - 1) * rows as i64 + 1,
            _ => 1,
        };
        let addr = self.access(buf, idx, span, Touch::Load);
        if lanes == 1 {
            return self.b.ins().load(self.ty, flags, addr, 0);
        }
        if Self::contiguous(a, at) {
            return self.b.ins().load(self.vty, flags, addr, 0);
        }
        if a == Access::Trans {
            // Gather: lanes are `rows` elements apart.
            let At::Syn { rows, .. } = at else { unreachable!("Trans only in SynMap") };
            let first = self.b.ins().load(self.ty, flags, addr, 0);
            let mut v = self.b.ins().splat(self.vty, first);
            for k in 1..lanes {
                let x = self.b.ins().load(self.ty, flags, addr, (k as i64 * rows as i64 * self.es) as i32);
                v = self.b.ins().insertlane(v, x, k);
            }
            return v;
        }
        let s = self.b.ins().load(self.ty, flags, addr, 0);
        self.b.ins().splat(self.vty, s)
    }

    /// How a kernel's output buffer is indexed: histories record at the current iteration.
    fn out_access(&self, buf: BufId) -> Access {
        if self.histories.contains(&buf) {
            Access::Hist
        } else {
            Access::Elem
        }
    }

    fn store(&mut self, buf: BufId, at: At, v: Value) {
        if let Some(idx) = self.index(self.out_access(buf), at) {
            let lanes = self.b.func.dfg.value_type(v).lane_count() as i64;
            let addr = self.access(buf, idx, lanes, Touch::Store);
            self.b.ins().store(MemFlagsData::trusted(), v, addr, 0);
        }
    }

    /// A comparison mask turned into the value type (all-ones lanes where true).
    fn cmp(&mut self, cc: FloatCC, x: Value, y: Value, lanes: u8) -> Cond {
        let m = self.b.ins().fcmp(cc, x, y);
        if lanes == 1 {
            Cond::Scalar(m)
        } else {
            let flags = MemFlagsData::new().with_endianness(Endianness::Little);
            Cond::Vector(self.b.ins().bitcast(self.vty, flags, m))
        }
    }

    fn select(&mut self, c: Cond, x: Value, y: Value) -> Value {
        match c {
            Cond::Scalar(m) => self.b.ins().select(m, x, y),
            Cond::Vector(m) => self.b.ins().bitselect(m, x, y),
        }
    }

    /// 1.0 where `c`, else 0.0.
    fn bool_value(&mut self, c: Cond, lanes: u8) -> Value {
        let one = self.splat_const(1.0, lanes);
        let zero = self.splat_const(0.0, lanes);
        self.select(c, one, zero)
    }

    fn is_nonzero(&mut self, x: Value, lanes: u8) -> Cond {
        let zero = self.splat_const(0.0, lanes);
        self.cmp(FloatCC::NotEqual, x, zero, lanes)
    }

    /// Calls a scalar helper on every lane.
    fn call_lanes(&mut self, role: &'static str, args: &[Value], lanes: u8) -> Value {
        if lanes == 1 {
            return self.call(role, args).expect("math helpers return a value");
        }
        let mut out: Option<Value> = None;
        for k in 0..lanes {
            let a: Vec<Value> = args.iter().map(|v| self.b.ins().extractlane(*v, k)).collect();
            let r = self.call(role, &a).expect("math helpers return a value");
            out = Some(match out {
                None => self.b.ins().splat(self.vty, r),
                Some(v) => self.b.ins().insertlane(v, r, k),
            });
        }
        out.expect("lanes > 0")
    }

    /// Flat element index of lane 0 at a point (for random draws).
    fn flat_index(&mut self, at: At) -> Value {
        match at {
            At::Map { b, i, cols } => {
                let r = self.b.ins().imul_imm_s(b, cols as i64);
                self.b.ins().iadd(r, i)
            }
            At::Syn { i, j, bb, rows, cols } => {
                let base = self.b.ins().imul_imm_s(bb, (rows * cols) as i64);
                let r = self.b.ins().imul_imm_s(i, cols as i64);
                let r = self.b.ins().iadd(r, j);
                self.b.ins().iadd(base, r)
            }
        }
    }

    fn expr(&mut self, e: &KExpr, at: At, lanes: u8, cache: &mut HashMap<(BufId, Access), Value>) -> Value {
        match e {
            KExpr::Const(c) => self.splat_const(*c, lanes),
            KExpr::InvBatch => {
                let v = self.inv_nb;
                self.splat(v, lanes)
            }
            KExpr::StepCount => {
                let s1 = self.b.ins().iadd_imm_s(self.step, 1);
                let f = self.b.ins().fcvt_from_uint(self.ty, s1);
                self.splat(f, lanes)
            }
            KExpr::Time(dt) => {
                // Same arithmetic as the interpreter: float(iter) * dt, in the element type.
                let it = self.b.use_var(self.iter);
                let f = self.b.ins().fcvt_from_uint(self.ty, it);
                let d = self.fconst(*dt);
                let t = self.b.ins().fmul(f, d);
                self.splat(t, lanes)
            }
            _ if self.pinned.contains_key(&(e as *const KExpr)) => self.pinned[&(e as *const KExpr)],
            KExpr::Load(b, a) => {
                if let Some(v) = cache.get(&(*b, *a)) {
                    return *v;
                }
                let v = self.load(*b, *a, at, lanes);
                cache.insert((*b, *a), v);
                v
            }
            KExpr::Unary(op, a) => {
                let x = self.expr(a, at, lanes, cache);
                match op {
                    UnOp::Neg => self.b.ins().fneg(x),
                    UnOp::Not => {
                        let zero = self.splat_const(0.0, lanes);
                        let c = self.cmp(FloatCC::Equal, x, zero, lanes);
                        self.bool_value(c, lanes)
                    }
                }
            }
            KExpr::Binary(op, a, b) => {
                let x = self.expr(a, at, lanes, cache);
                let y = self.expr(b, at, lanes, cache);
                self.binop(*op, x, y, lanes)
            }
            KExpr::Call(f, args) => {
                let vs: Vec<Value> = args.iter().map(|a| self.expr(a, at, lanes, cache)).collect();
                self.func(*f, &vs, lanes)
            }
            KExpr::Rand(kind, stream) => {
                let it = self.b.use_var(self.iter);
                let hi = self.b.ins().ishl_imm_u(it, 32);
                let key = self.b.ins().bor_imm_u(hi, *stream as i64);
                let idx0 = self.flat_index(at);
                let role = if *kind == RandKind::Uniform { "rand_uniform" } else { "rand_normal" };
                let (seed, step) = (self.seed, self.step);
                let mut out: Option<Value> = None;
                for k in 0..lanes {
                    let idx = self.b.ins().iadd_imm_s(idx0, k as i64);
                    let r = self.call(role, &[seed, key, step, idx]).expect("returns f64");
                    let r = if self.ty == types::F32 { self.b.ins().fdemote(types::F32, r) } else { r };
                    out = Some(match (out, lanes) {
                        (None, 1) => r,
                        (None, _) => self.b.ins().splat(self.vty, r),
                        (Some(v), _) => self.b.ins().insertlane(v, r, k),
                    });
                }
                out.expect("lanes > 0")
            }
        }
    }

    fn binop(&mut self, op: BinOp, x: Value, y: Value, lanes: u8) -> Value {
        match op {
            BinOp::Add => self.b.ins().fadd(x, y),
            BinOp::Sub => self.b.ins().fsub(x, y),
            BinOp::Mul => self.b.ins().fmul(x, y),
            BinOp::Div => self.b.ins().fdiv(x, y),
            BinOp::Pow => self.call_lanes("pow", &[x, y], lanes),
            BinOp::Rem => self.call_lanes("fmod", &[x, y], lanes),
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let cc = match op {
                    BinOp::Eq => FloatCC::Equal,
                    BinOp::Ne => FloatCC::NotEqual,
                    BinOp::Lt => FloatCC::LessThan,
                    BinOp::Le => FloatCC::LessThanOrEqual,
                    BinOp::Gt => FloatCC::GreaterThan,
                    _ => FloatCC::GreaterThanOrEqual,
                };
                let c = self.cmp(cc, x, y, lanes);
                self.bool_value(c, lanes)
            }
            BinOp::And | BinOp::Or => {
                let a = self.is_nonzero(x, lanes);
                let b = self.is_nonzero(y, lanes);
                let c = match (a, b) {
                    (Cond::Scalar(p), Cond::Scalar(q)) => {
                        Cond::Scalar(if op == BinOp::And { self.b.ins().band(p, q) } else { self.b.ins().bor(p, q) })
                    }
                    (Cond::Vector(p), Cond::Vector(q)) => {
                        Cond::Vector(if op == BinOp::And { self.b.ins().band(p, q) } else { self.b.ins().bor(p, q) })
                    }
                    _ => unreachable!("both operands have the same lane count"),
                };
                self.bool_value(c, lanes)
            }
        }
    }

    fn func(&mut self, f: Func, a: &[Value], lanes: u8) -> Value {
        let x = a[0];
        let zero = self.splat_const(0.0, lanes);
        match f {
            Func::Relu => {
                let c = self.cmp(FloatCC::GreaterThan, x, zero, lanes);
                self.select(c, x, zero)
            }
            Func::LeakyRelu => {
                let s = match a.get(1) {
                    Some(s) => *s,
                    None => self.splat_const(math::LEAKY_SLOPE, lanes),
                };
                let sx = self.b.ins().fmul(s, x);
                let c = self.cmp(FloatCC::GreaterThan, x, zero, lanes);
                self.select(c, x, sx)
            }
            Func::Step => {
                let c = self.cmp(FloatCC::GreaterThan, x, zero, lanes);
                self.bool_value(c, lanes)
            }
            Func::Sign => {
                let one = self.splat_const(1.0, lanes);
                let neg = self.splat_const(-1.0, lanes);
                let lt = self.cmp(FloatCC::LessThan, x, zero, lanes);
                let inner = self.select(lt, neg, zero);
                let gt = self.cmp(FloatCC::GreaterThan, x, zero, lanes);
                self.select(gt, one, inner)
            }
            Func::Abs => self.b.ins().fabs(x),
            Func::Sqrt => self.b.ins().sqrt(x),
            Func::Floor => self.b.ins().floor(x),
            Func::Exp => self.call_lanes("exp", &[x], lanes),
            Func::Log => self.call_lanes("log", &[x], lanes),
            Func::Tanh => self.call_lanes("tanh", &[x], lanes),
            Func::Sigmoid => self.call_lanes("sigmoid", &[x], lanes),
            Func::Gelu => self.call_lanes("gelu", &[x], lanes),
            Func::Sin => self.call_lanes("sin", &[x], lanes),
            Func::Cos => self.call_lanes("cos", &[x], lanes),
            Func::Softplus => {
                let beta = match a.get(1) {
                    Some(b) => *b,
                    None => self.splat_const(1.0, lanes),
                };
                self.call_lanes("softplus", &[x, beta], lanes)
            }
            Func::Pow => self.call_lanes("pow", &[x, a[1]], lanes),
            Func::Min => {
                let c = self.cmp(FloatCC::LessThan, x, a[1], lanes);
                self.select(c, x, a[1])
            }
            Func::Max => {
                let c = self.cmp(FloatCC::GreaterThan, x, a[1], lanes);
                self.select(c, x, a[1])
            }
            Func::Clip => {
                let c = self.cmp(FloatCC::GreaterThan, x, a[1], lanes);
                let lo = self.select(c, x, a[1]);
                let c2 = self.cmp(FloatCC::LessThan, lo, a[2], lanes);
                self.select(c2, lo, a[2])
            }
            Func::Select => {
                let c = self.is_nonzero(x, lanes);
                self.select(c, a[1], a[2])
            }
        }
    }

    /// Evaluates the stores of a fused loop at one point.
    fn point(&mut self, stores: &[Store], at: At, lanes: u8) {
        self.point_with(stores, at, lanes, HashMap::new());
    }

    /// `point`, starting from values already loaded at this point (`cache`); returns the
    /// loads and stores made, by buffer and access mode.
    fn point_with(
        &mut self,
        stores: &[Store],
        at: At,
        lanes: u8,
        mut cache: HashMap<(BufId, Access), Value>,
    ) -> HashMap<(BufId, Access), Value> {
        for s in stores {
            let v = self.expr(&s.value, at, lanes, &mut cache);
            let v = match &s.guard {
                Some(g) => {
                    let gv = self.expr(g, at, lanes, &mut cache);
                    let acc = self.out_access(s.out);
                    let old = match cache.get(&(s.out, acc)) {
                        Some(o) => *o,
                        None => self.load(s.out, acc, at, lanes),
                    };
                    let c = self.is_nonzero(gv, lanes);
                    self.select(c, v, old)
                }
                None => v,
            };
            self.store(s.out, at, v);
            // Forget every cached read of this buffer: another access mode may alias the
            // element just written (in a one-column loop `buf[b]` is `buf[b, 0]`).
            cache.retain(|(b, _), _| *b != s.out);
            cache.insert((s.out, self.out_access(s.out)), v);
        }
        cache
    }

    /// Runs `body(point, lanes)` over `0..n` columns: vectors, then a scalar tail.
    fn columns(&mut self, n: usize, body: &mut dyn FnMut(&mut Self, Value, u8)) {
        let lanes = self.lanes as usize;
        let vec_end = n - n % lanes;
        let zero = self.iconst(0);
        if vec_end > 0 {
            let end = self.iconst(vec_end as i64);
            self.for_loop(zero, end, lanes as i64, &mut |g, i| body(g, i, g.lanes));
        }
        if vec_end < n {
            let start = self.iconst(vec_end as i64);
            let end = self.iconst(n as i64);
            self.for_loop(start, end, 1, &mut |g, i| body(g, i, 1));
        }
    }

    fn reduce_init(&mut self, op: RedOp, lanes: u8) -> Value {
        let c = match op {
            RedOp::Sum => 0.0,
            RedOp::Max => f64::NEG_INFINITY,
            RedOp::Min => f64::INFINITY,
        };
        self.splat_const(c, lanes)
    }

    fn reduce_step(&mut self, op: RedOp, acc: Value, v: Value, lanes: u8) -> Value {
        match op {
            RedOp::Sum => self.b.ins().fadd(acc, v),
            RedOp::Max => {
                let c = self.cmp(FloatCC::GreaterThan, v, acc, lanes);
                self.select(c, v, acc)
            }
            RedOp::Min => {
                let c = self.cmp(FloatCC::LessThan, v, acc, lanes);
                self.select(c, v, acc)
            }
        }
    }

    /// Reduces `value` over `n` columns at a fixed outer index; returns the scalar result.
    fn reduce_row(&mut self, op: RedOp, value: &KExpr, n: usize, mk_at: &dyn Fn(Value) -> At) -> Value {
        let vacc = self.b.declare_var(self.vty);
        let sacc = self.b.declare_var(self.ty);
        let init_v = self.reduce_init(op, self.lanes);
        self.b.def_var(vacc, init_v);
        let lanes = self.lanes as usize;
        let vec_end = n - n % lanes;
        let zero = self.iconst(0);
        if vec_end > 0 {
            let end = self.iconst(vec_end as i64);
            self.for_loop(zero, end, lanes as i64, &mut |g, i| {
                let mut cache = HashMap::new();
                let v = g.expr(value, mk_at(i), g.lanes, &mut cache);
                let acc = g.b.use_var(vacc);
                let r = g.reduce_step(op, acc, v, g.lanes);
                g.b.def_var(vacc, r);
            });
        }
        // Horizontal reduction of the vector accumulator.
        let acc = self.b.use_var(vacc);
        let mut s = self.b.ins().extractlane(acc, 0);
        for k in 1..self.lanes {
            let x = self.b.ins().extractlane(acc, k);
            s = self.reduce_step(op, s, x, 1);
        }
        self.b.def_var(sacc, s);
        if vec_end < n {
            let start = self.iconst(vec_end as i64);
            let end = self.iconst(n as i64);
            self.for_loop(start, end, 1, &mut |g, i| {
                let mut cache = HashMap::new();
                let v = g.expr(value, mk_at(i), 1, &mut cache);
                let acc = g.b.use_var(sacc);
                let r = g.reduce_step(op, acc, v, 1);
                g.b.def_var(sacc, r);
            });
        }
        self.b.use_var(sacc)
    }

    fn rows_value(&mut self, batched: bool) -> Value {
        if batched {
            self.nb
        } else {
            self.iconst(1)
        }
    }

    /// `out (+)= x · wᵀ` (or `x · w`) through gemm.
    fn gemm_call(&mut self, out: BufId, x: BufId, w: BufId, n_out: usize, n_in: usize, transpose: bool, accumulate: bool) {
        if self.check {
            let (nx, ny) = if transpose { (n_out, n_in) } else { (n_in, n_out) };
            let ex = self.b.ins().imul_imm_s(self.nb, nx as i64);
            self.guard_extent(x, ex, Touch::Call);
            let ey = self.b.ins().imul_imm_s(self.nb, ny as i64);
            self.guard_extent(out, ey, Touch::Call);
            let ew = self.iconst((n_out * n_in) as i64);
            self.guard_extent(w, ew, Touch::Call);
        }
        let args = [
            self.base(out),
            self.base(x),
            self.base(w),
            self.nb,
            self.iconst(n_out as i64),
            self.iconst(n_in as i64),
            self.iconst(transpose as i64),
            self.iconst(accumulate as i64),
        ];
        self.call("matmul", &args);
    }

    fn kernel(&mut self, k: &Kernel) {
        self.cur_kernel = self.next_kernel;
        self.next_kernel += 1;
        match k {
            Kernel::Map { batched, cols, stores } => {
                let rows = self.rows_value(*batched);
                let zero = self.iconst(0);
                let cols = *cols;
                self.for_loop(zero, rows, 1, &mut |g, b| {
                    g.columns(cols, &mut |g, i, lanes| g.point(stores, At::Map { b, i, cols }, lanes));
                });
            }
            Kernel::Reduce { out, op, batched, cols, value } => {
                let rows = self.rows_value(*batched);
                let zero = self.iconst(0);
                let (out, op, cols) = (*out, *op, *cols);
                self.for_loop(zero, rows, 1, &mut |g, b| {
                    let r = g.reduce_row(op, value, cols, &|i| At::Map { b, i, cols });
                    let addr = g.access(out, b, 1, Touch::Store);
                    g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                });
            }
            Kernel::SynMap { rows, cols, over_batch, stores } => {
                let nbb = self.rows_value(*over_batch);
                let zero = self.iconst(0);
                let (rows, cols) = (*rows, *cols);
                if !self.blockable(stores) {
                    // Some rule reads what it writes other than at its own synapse: keep the
                    // row-by-row order.
                    self.for_loop(zero, nbb, 1, &mut |g, bb| {
                        let z = g.iconst(0);
                        let re = g.iconst(rows as i64);
                        g.for_loop(z, re, 1, &mut |g, i| {
                            g.columns(cols, &mut |g, j, lanes| g.point(stores, At::Syn { i, j, bb, rows, cols }, lanes));
                        });
                    });
                } else if !*over_batch && rows * cols >= PAR_MIN_SYNAPSES && rows >= 2 * BLOCK_ROWS as usize {
                    self.par_synmap(k, rows);
                } else if *over_batch {
                    self.for_loop(zero, nbb, 1, &mut |g, bb| g.syn_blocked(stores, rows, cols, bb, None));
                } else {
                    let plan = sparse_plan(stores, self.lanes as usize, rows, cols);
                    self.syn_blocked(stores, rows, cols, zero, plan.as_ref());
                }
            }
            Kernel::SynReduce { out, row, op, rows, cols, value } => {
                let (out, op, rows, cols) = (*out, *op, *rows, *cols);
                let bb = self.iconst(0);
                if *row {
                    let z = self.iconst(0);
                    let re = self.iconst(rows as i64);
                    self.for_loop(z, re, 1, &mut |g, i| {
                        let r = g.reduce_row(op, value, cols, &|j| At::Syn { i, j, bb, rows, cols });
                        let addr = g.access(out, i, 1, Touch::Store);
                        g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                    });
                } else {
                    // out[j] = identity; then out[j] = op(out[j], v(i, j)) row by row.
                    self.columns(cols, &mut |g, j, lanes| {
                        let init = g.reduce_init(op, lanes);
                        let addr = g.access(out, j, lanes as i64, Touch::Store);
                        g.b.ins().store(MemFlagsData::trusted(), init, addr, 0);
                    });
                    let z = self.iconst(0);
                    let re = self.iconst(rows as i64);
                    self.for_loop(z, re, 1, &mut |g, i| {
                        g.columns(cols, &mut |g, j, lanes| {
                            let mut cache = HashMap::new();
                            let v = g.expr(value, At::Syn { i, j, bb, rows, cols }, lanes, &mut cache);
                            let addr = g.access(out, j, lanes as i64, Touch::Load);
                            let t = if lanes == 1 { g.ty } else { g.vty };
                            let acc = g.b.ins().load(t, MemFlagsData::trusted(), addr, 0);
                            let r = g.reduce_step(op, acc, v, lanes);
                            g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                        });
                    });
                }
            }
            Kernel::MatMul { out, x, w, n_out, n_in, transpose: false, accumulate } => {
                // One sample: generated code (no call, zero inputs skipped); a batch: gemm.
                let one = self.b.ins().icmp_imm_s(IntCC::Equal, self.nb, 1);
                let (single, batch, cont) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
                self.b.ins().brif(one, single, &[], batch, &[]);
                self.b.switch_to_block(single);
                self.matvec(*out, *x, *w, *n_out, *n_in, *accumulate);
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(batch);
                self.gemm_call(*out, *x, *w, *n_out, *n_in, false, *accumulate);
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(cont);
            }
            Kernel::MatMul { out, x, w, n_out, n_in, transpose, accumulate } => {
                self.gemm_call(*out, *x, *w, *n_out, *n_in, *transpose, *accumulate)
            }
            Kernel::Outer { out, p, q, rows, cols, mean, repeat, accumulate } => {
                let scale = if *mean { self.inv_nb } else { self.fconst(1.0) };
                // A history spans `repeat` batches of rows; the mean is still over the batch.
                let n = self.history_rows(*repeat);
                if self.check {
                    let ep = self.b.ins().imul_imm_s(n, *rows as i64);
                    self.guard_extent(*p, ep, Touch::Call);
                    let eq = self.b.ins().imul_imm_s(n, *cols as i64);
                    self.guard_extent(*q, eq, Touch::Call);
                    let eo = self.iconst((rows * cols) as i64);
                    self.guard_extent(*out, eo, Touch::Call);
                }
                let args = [
                    self.base(*out),
                    self.base(*p),
                    self.base(*q),
                    n,
                    self.iconst(*rows as i64),
                    self.iconst(*cols as i64),
                    scale,
                    self.iconst(*accumulate as i64),
                ];
                self.call("outer", &args);
            }
            Kernel::BatchSum { out, src, cols, mean, repeat, accumulate } => {
                let scale = if *mean { self.inv_nb } else { self.fconst(1.0) };
                let n = self.history_rows(*repeat);
                if self.check {
                    let es = self.b.ins().imul_imm_s(n, *cols as i64);
                    self.guard_extent(*src, es, Touch::Call);
                    let eo = self.iconst(*cols as i64);
                    self.guard_extent(*out, eo, Touch::Call);
                }
                let args = [self.base(*out), self.base(*src), n, self.iconst(*cols as i64), scale, self.iconst(*accumulate as i64)];
                self.call("batch_sum", &args);
            }
            Kernel::Copy { dst, src, len } => {
                if self.check {
                    let e = self.iconst(*len as i64);
                    self.guard_extent(*dst, e, Touch::Copy);
                    self.guard_extent(*src, e, Touch::Copy);
                }
                let (d, s) = (self.base(*dst), self.base(*src));
                let size = self.iconst(*len as i64 * self.es);
                let cfg = self.module.target_config();
                self.b.call_memcpy(cfg, d, s, size);
            }
            Kernel::Loop { count, reverse, body } => {
                let (saved_iter, saved_hist) = (self.b.use_var(self.iter), self.b.use_var(self.hist));
                let zero = self.iconst(0);
                let count = self.iconst(*count as i64);
                // In a segment: its iterations (at most `count`), numbered from its base.
                let (base, end) = match self.segment {
                    Some((base, n)) => (Some(base), self.b.ins().umin(count, n)),
                    None => (None, count),
                };
                let reverse = *reverse;
                self.for_loop(zero, end, 1, &mut |g, it| {
                    // A backward loop counts its iterations down: end − 1 − it.
                    let j = if reverse {
                        let last = g.b.ins().iadd_imm_s(end, -1);
                        g.b.ins().isub(last, it)
                    } else {
                        it
                    };
                    let iter = match base {
                        Some(base) => g.b.ins().iadd(base, j),
                        None => j,
                    };
                    g.b.def_var(g.iter, iter);
                    g.b.def_var(g.hist, j);
                    for k in body {
                        g.kernel(k);
                    }
                });
                self.b.def_var(self.iter, saved_iter);
                self.b.def_var(self.hist, saved_hist);
            }
            Kernel::Segments { total, len, reverse, body } => {
                let (saved_iter, saved_hist) = (self.b.use_var(self.iter), self.b.use_var(self.hist));
                let (total, len, reverse) = (*total as i64, *len as i64, *reverse);
                let m = (total + len - 1) / len;
                let zero = self.iconst(0);
                let end = self.iconst(m);
                self.for_loop(zero, end, 1, &mut |g, k| {
                    // Segment s (last first when reversed) covers [s·len, min(s·len + len, total)).
                    let s = if reverse {
                        let last = g.iconst(m - 1);
                        g.b.ins().isub(last, k)
                    } else {
                        k
                    };
                    let base = g.b.ins().imul_imm_s(s, len);
                    let total = g.iconst(total);
                    let rest = g.b.ins().isub(total, base);
                    let len = g.iconst(len);
                    let n = g.b.ins().umin(rest, len);
                    g.b.def_var(g.iter, base);
                    g.b.def_var(g.hist, s);
                    g.segment = Some((base, n));
                    for k in body {
                        g.kernel(k);
                    }
                    g.segment = None;
                });
                self.b.def_var(self.iter, saved_iter);
                self.b.def_var(self.hist, saved_hist);
            }
            Kernel::Every { every, body } => {
                let s1 = self.b.ins().iadd_imm_s(self.step, 1);
                let r = self.b.ins().urem_imm_u(s1, *every as i64);
                let then = self.b.create_block();
                let cont = self.b.create_block();
                self.b.ins().brif(r, cont, &[], then, &[]);
                self.b.switch_to_block(then);
                for k in body {
                    self.kernel(k);
                }
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(cont);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Cond {
    Scalar(Value),
    Vector(Value),
}

// ---------------------------------------------------------------------------------------------
// Synapse passes: rows in blocks, row invariants hoisted, provably-zero work skipped

/// Which rows or column groups a blocked synapse pass visits.
#[derive(Clone, Copy)]
enum Visit {
    /// All of them, in order.
    All,
    /// The first `count` entries (`u32`, in order) of the list at `addr`, which has room for
    /// `cap` (`code`: which list, for bounds checks).
    List { addr: Value, count: Value, cap: usize, code: i64 },
}

/// Rows per pass of a blocked synapse loop: each `pre` value loaded is shared by this many rows.
const BLOCK_ROWS: i64 = 4;

/// Longest row or column-group list kept on the stack (`u32` entries).
const MAX_LIST: usize = 1 << 16;

/// A synapse update `w ± T` whose term `T` is a product of leaves: a zero `post` (`pre`)
/// factor makes `T` a signed zero on its whole row (column) when every factor it is multiplied
/// with on the way to the root of `T` is finite. `w ± 0` is `w` (up to the sign of a zero `w`:
/// `-0 + 0` is `+0`), so such rows and columns are skipped. Finiteness is checked at run time
/// (`siblings`); where it fails nothing is skipped.
struct SparsePlan<'e> {
    /// A `post` leaf and the leaves it is multiplied with.
    row: Option<(&'e KExpr, Vec<&'e KExpr>)>,
    /// A `pre` leaf and the leaves it is multiplied with.
    col: Option<(&'e KExpr, Vec<&'e KExpr>)>,
}

/// Whether an expression is a leaf of a skippable product term.
fn product_leaf(e: &KExpr, out: BufId) -> bool {
    match e {
        KExpr::Const(c) => c.is_finite(),
        KExpr::StepCount => true,
        KExpr::Load(b, a) => *b != out && matches!(a, Access::Post | Access::Pre | Access::Sample | Access::Scalar),
        _ => false,
    }
}

/// The leaves of a product tree (`None` if `e` is not a product of leaves).
fn product_leaves<'e>(e: &'e KExpr, out: BufId, acc: &mut Vec<&'e KExpr>) -> bool {
    match e {
        KExpr::Binary(BinOp::Mul, a, b) => product_leaves(a, out, acc) && product_leaves(b, out, acc),
        _ if product_leaf(e, out) => {
            acc.push(e);
            true
        }
        _ => false,
    }
}

/// The subtrees multiplied with `target` on its path from the root `e` (innermost last).
fn path_siblings<'e>(e: &'e KExpr, target: *const KExpr, acc: &mut Vec<&'e KExpr>) -> bool {
    if std::ptr::eq(e, target) {
        return true;
    }
    if let KExpr::Binary(BinOp::Mul, a, b) = e {
        acc.push(b);
        if path_siblings(a, target, acc) {
            return true;
        }
        acc.pop();
        acc.push(a);
        if path_siblings(b, target, acc) {
            return true;
        }
        acc.pop();
    }
    false
}

/// Skipping for a pass over `rows × cols` synapses with these stores, if it is a pure product
/// update (one unguarded store `w = w ± T`).
fn sparse_plan(stores: &[Store], lanes: usize, rows: usize, cols: usize) -> Option<SparsePlan<'_>> {
    let [s] = stores else { return None };
    if s.guard.is_some() || rows > MAX_LIST || cols / lanes > MAX_LIST {
        return None;
    }
    let KExpr::Binary(BinOp::Add | BinOp::Sub, old, t) = &s.value else { return None };
    if **old != KExpr::Load(s.out, Access::Elem) {
        return None;
    }
    let mut leaves = Vec::new();
    if !product_leaves(t, s.out, &mut leaves) {
        return None;
    }
    let pick = |acc: Access| {
        leaves.iter().find_map(|l| {
            let KExpr::Load(_, a) = l else { return None };
            if *a != acc {
                return None;
            }
            let mut sib = Vec::new();
            // Every factor on the path must be a leaf: a product of finite leaves may overflow.
            (path_siblings(t, *l as *const KExpr, &mut sib) && sib.iter().all(|x| product_leaf(x, s.out))).then_some((*l, sib))
        })
    };
    let plan = SparsePlan { row: pick(Access::Post), col: if cols >= lanes { pick(Access::Pre) } else { None } };
    (plan.row.is_some() || plan.col.is_some()).then_some(plan)
}

impl<'a, 'm> Gen<'a, 'm> {
    /// Whether the rows of a synapse pass are independent: every buffer it writes is read only
    /// at the synapse being written (so rows may be interleaved and row values hoisted).
    fn blockable(&self, stores: &[Store]) -> bool {
        let outs: HashSet<BufId> = stores.iter().map(|s| s.out).collect();
        let mut ok = true;
        for s in stores {
            for e in std::iter::once(&s.value).chain(&s.guard) {
                e.walk(&mut |x| {
                    if let KExpr::Load(b, a) = x {
                        if outs.contains(b) && *a != Access::Elem {
                            ok = false;
                        }
                    }
                });
            }
        }
        ok && stores.iter().all(|s| !self.histories.contains(&s.out))
    }

    /// A `u32` list of `n` entries on the stack.
    fn stack_list(&mut self, n: usize) -> Value {
        let slot = self.b.create_sized_stack_slot(ir::StackSlotData::new(ir::StackSlotKind::ExplicitSlot, (n.max(1) * 4) as u32, 4));
        self.b.ins().stack_addr(self.ptr, slot, 0)
    }

    /// 1 (i8) where `x` is finite.
    fn finite(&mut self, x: Value) -> Value {
        let d = self.b.ins().fsub(x, x);
        self.b.ins().fcmp(FloatCC::Equal, d, d)
    }

    /// 1 (i8) where the first `n` elements of `buf` are all finite.
    fn all_finite(&mut self, buf: BufId, n: usize) -> Value {
        let lanes = self.lanes as usize;
        let vec_end = n - n % lanes;
        let vacc = self.b.declare_var(self.vty);
        let z = self.splat_const(0.0, self.lanes);
        self.b.def_var(vacc, z);
        let sacc = self.b.declare_var(self.ty);
        let zs = self.fconst(0.0);
        self.b.def_var(sacc, zs);
        let flags = self.flags(buf);
        let (vty, ty) = (self.vty, self.ty);
        let start = self.iconst(0);
        let end = self.iconst(vec_end as i64);
        // Σ (x − x) is 0 when every x is finite, NaN otherwise.
        self.for_loop(start, end, lanes as i64, &mut |g, j| {
            let a = g.access(buf, j, lanes as i64, Touch::Load);
            let x = g.b.ins().load(vty, flags, a, 0);
            let d = g.b.ins().fsub(x, x);
            let acc = g.b.use_var(vacc);
            let r = g.b.ins().fadd(acc, d);
            g.b.def_var(vacc, r);
        });
        let start = self.iconst(vec_end as i64);
        let end = self.iconst(n as i64);
        self.for_loop(start, end, 1, &mut |g, j| {
            let a = g.access(buf, j, 1, Touch::Load);
            let x = g.b.ins().load(ty, flags, a, 0);
            let d = g.b.ins().fsub(x, x);
            let acc = g.b.use_var(sacc);
            let r = g.b.ins().fadd(acc, d);
            g.b.def_var(sacc, r);
        });
        let v = self.b.use_var(vacc);
        let m = self.b.ins().fcmp(FloatCC::Equal, v, v);
        let vok = self.b.ins().vall_true(m);
        let s = self.b.use_var(sacc);
        let sok = self.b.ins().fcmp(FloatCC::Equal, s, s);
        self.b.ins().band(vok, sok)
    }

    /// 1 (i8) where every sibling leaf not indexed by `skip` (the loop the list runs over) is
    /// finite everywhere; post leaves are checked over all `rows` when `skip` is `Pre`.
    fn siblings_finite(&mut self, sib: &[&KExpr], skip: Access, rows: usize, cols: usize) -> Value {
        let mut ok = self.b.ins().iconst(types::I8, 1);
        for l in sib {
            let f = match l {
                KExpr::Load(b, Access::Pre) => self.all_finite(*b, cols),
                KExpr::Load(b, Access::Post) if skip == Access::Pre => self.all_finite(*b, rows),
                KExpr::Load(b, Access::Sample | Access::Scalar) => {
                    let flags = self.flags(*b);
                    let a = if self.check {
                        let z = self.iconst(0);
                        self.access(*b, z, 1, Touch::Load)
                    } else {
                        self.bases[b] // unchecked: loaded in the prologue
                    };
                    let x = self.b.ins().load(self.ty, flags, a, 0);
                    self.finite(x)
                }
                _ => continue,
            };
            ok = self.b.ins().band(ok, f);
        }
        ok
    }

    /// The rows of a pass that are not provably unchanged, as a list.
    fn row_list(&mut self, zero: &KExpr, sib: &[&KExpr], rows: usize, cols: usize) -> Visit {
        let KExpr::Load(zb, _) = zero else { unreachable!("a post leaf") };
        let zb = *zb;
        let global = self.siblings_finite(sib, Access::Post, rows, cols);
        let addr = self.stack_list(rows);
        let n = self.b.declare_var(types::I64);
        let z0 = self.iconst(0);
        self.b.def_var(n, z0);
        let start = self.iconst(0);
        let end = self.iconst(rows as i64);
        let flags = self.flags(zb);
        self.for_loop(start, end, 1, &mut |g, i| {
            let a = g.access(zb, i, 1, Touch::Load);
            let x = g.b.ins().load(g.ty, flags, a, 0);
            let zc = g.fconst(0.0);
            let mut skip = g.b.ins().fcmp(FloatCC::Equal, x, zc);
            skip = g.b.ins().band(skip, global);
            for l in sib {
                if let KExpr::Load(b, Access::Post) = l {
                    let fl = g.flags(*b);
                    let a = g.access(*b, i, 1, Touch::Load);
                    let y = g.b.ins().load(g.ty, fl, a, 0);
                    let f = g.finite(y);
                    skip = g.b.ins().band(skip, f);
                }
            }
            // Branch-free: write the index, advance unless skipped.
            let k = g.b.use_var(n);
            g.guard_list(abi::LIST_ROWS, k, rows);
            let off = g.b.ins().ishl_imm_u(k, 2);
            let slot = g.b.ins().iadd(addr, off);
            g.b.ins().istore32(MemFlagsData::trusted(), i, slot, 0);
            let keep = g.b.ins().bxor_imm_u(skip, 1);
            let keep = g.b.ins().uextend(types::I64, keep);
            let k1 = g.b.ins().iadd(k, keep);
            g.b.def_var(n, k1);
        });
        let count = self.b.use_var(n);
        Visit::List { addr, count, cap: rows, code: abi::LIST_ROWS }
    }

    /// The first columns of the vector groups of a pass that are not provably unchanged.
    fn col_list(&mut self, zero: &KExpr, sib: &[&KExpr], rows: usize, cols: usize) -> Visit {
        let KExpr::Load(zb, _) = zero else { unreachable!("a pre leaf") };
        let zb = *zb;
        let lanes = self.lanes as usize;
        let vec_end = cols - cols % lanes;
        let global = self.siblings_finite(sib, Access::Pre, rows, cols);
        let addr = self.stack_list(vec_end / lanes);
        let n = self.b.declare_var(types::I64);
        let z0 = self.iconst(0);
        self.b.def_var(n, z0);
        let start = self.iconst(0);
        let end = self.iconst(vec_end as i64);
        let flags = self.flags(zb);
        self.for_loop(start, end, lanes as i64, &mut |g, j| {
            let a = g.access(zb, j, lanes as i64, Touch::Load);
            let x = g.b.ins().load(g.vty, flags, a, 0);
            let zc = g.splat_const(0.0, g.lanes);
            let m = g.b.ins().fcmp(FloatCC::Equal, x, zc);
            let all = g.b.ins().vall_true(m);
            let skip = g.b.ins().band(all, global);
            let k = g.b.use_var(n);
            g.guard_list(abi::LIST_COLS, k, vec_end / lanes);
            let off = g.b.ins().ishl_imm_u(k, 2);
            let slot = g.b.ins().iadd(addr, off);
            g.b.ins().istore32(MemFlagsData::trusted(), j, slot, 0);
            let keep = g.b.ins().bxor_imm_u(skip, 1);
            let keep = g.b.ins().uextend(types::I64, keep);
            let k1 = g.b.ins().iadd(k, keep);
            g.b.def_var(n, k1);
        });
        let count = self.b.use_var(n);
        Visit::List { addr, count, cap: vec_end / lanes, code: abi::LIST_COLS }
    }

    /// Entry `k` of a visit list (or `k` itself).
    fn visit_at(&mut self, v: Visit, k: Value) -> Value {
        match v {
            Visit::All => k,
            Visit::List { addr, cap, code, .. } => {
                self.guard_list(code, k, cap);
                let off = self.b.ins().ishl_imm_u(k, 2);
                let a = self.b.ins().iadd(addr, off);
                self.b.ins().uload32(MemFlagsData::trusted(), a, 0)
            }
        }
    }

    /// One pass over the synapses of `rows × cols` (batch row `bb`): `BLOCK_ROWS` rows at a
    /// time so that each `pre` load serves all of them, row-invariant subexpressions evaluated
    /// once per row, and with a plan only the rows and column groups that can change.
    fn syn_blocked(&mut self, stores: &[Store], rows: usize, cols: usize, bb: Value, plan: Option<&SparsePlan>) {
        let rv = match plan.and_then(|p| p.row.as_ref()) {
            Some((z, sib)) => self.row_list(z, sib, rows, cols),
            None => Visit::All,
        };
        let cv = match plan.and_then(|p| p.col.as_ref()) {
            Some((z, sib)) => self.col_list(z, sib, rows, cols),
            None => Visit::All,
        };
        let (lo, hi) = match rv {
            Visit::All => (self.iconst(0), self.iconst(rows as i64)),
            Visit::List { count, .. } => (self.iconst(0), count),
        };
        self.syn_range(stores, rows, cols, bb, rv, cv, lo, hi);
    }

    /// Entries `lo .. hi` of the rows `rv` of a blocked synapse pass.
    fn syn_range(&mut self, stores: &[Store], rows: usize, cols: usize, bb: Value, rv: Visit, cv: Visit, lo: Value, hi: Value) {
        let n = self.b.ins().isub(hi, lo);
        let n4 = self.b.ins().band_imm_s(n, -BLOCK_ROWS);
        let blocked = self.b.ins().iadd(lo, n4);
        self.for_loop(lo, blocked, BLOCK_ROWS, &mut |g, k| {
            let is: Vec<Value> = (0..BLOCK_ROWS)
                .map(|t| {
                    let kt = g.b.ins().iadd_imm_s(k, t);
                    g.visit_at(rv, kt)
                })
                .collect();
            g.syn_rows(stores, &is, rows, cols, bb, cv);
        });
        self.for_loop(blocked, hi, 1, &mut |g, k| {
            let i = g.visit_at(rv, k);
            g.syn_rows(stores, &[i], rows, cols, bb, cv);
        });
    }

    /// Row-invariant subexpressions of the stores (no synapse or `pre` value, no random draw),
    /// evaluated at row `i` in vector form.
    fn row_invariants(&mut self, stores: &[Store], at: At) -> HashMap<*const KExpr, Value> {
        fn invariant(e: &KExpr) -> bool {
            let mut ok = true;
            e.walk(&mut |x| match x {
                KExpr::Load(_, Access::Elem | Access::Trans | Access::Pre | Access::Hist) | KExpr::Rand(..) => ok = false,
                _ => {}
            });
            ok
        }
        fn collect<'e>(e: &'e KExpr, out: &mut Vec<&'e KExpr>) {
            if invariant(e) {
                if !matches!(e, KExpr::Const(_)) {
                    out.push(e);
                }
                return;
            }
            match e {
                KExpr::Unary(_, a) => collect(a, out),
                KExpr::Binary(_, a, b) => {
                    collect(a, out);
                    collect(b, out);
                }
                KExpr::Call(_, args) => args.iter().for_each(|a| collect(a, out)),
                _ => {}
            }
        }
        let mut subs = Vec::new();
        for s in stores {
            collect(&s.value, &mut subs);
            if let Some(g) = &s.guard {
                collect(g, &mut subs);
            }
        }
        let mut cache = HashMap::new();
        let mut out = HashMap::new();
        for e in subs {
            let v = self.expr(e, at, self.lanes, &mut cache);
            out.insert(e as *const KExpr, v);
        }
        out
    }

    /// The synapses of rows `is` (column groups as `cv` says, then the scalar tail).
    fn syn_rows(&mut self, stores: &[Store], is: &[Value], rows: usize, cols: usize, bb: Value, cv: Visit) {
        let lanes = self.lanes as usize;
        let vec_end = cols - cols % lanes;
        if vec_end > 0 {
            let zero = self.iconst(0);
            let pins: Vec<_> = is.iter().map(|&i| self.row_invariants(stores, At::Syn { i, j: zero, bb, rows, cols })).collect();
            let mut body = |g: &mut Self, j: Value| {
                // Loads of `pre` and per-sample values serve every row of the block.
                let mut shared: HashMap<(BufId, Access), Value> = HashMap::new();
                for (r, &i) in is.iter().enumerate() {
                    g.pinned = pins[r].clone();
                    let seen = g.point_with(stores, At::Syn { i, j, bb, rows, cols }, g.lanes, shared.clone());
                    shared = seen.into_iter().filter(|((_, a), _)| matches!(a, Access::Pre | Access::Sample | Access::Scalar)).collect();
                }
                g.pinned.clear();
            };
            match cv {
                Visit::All => {
                    let end = self.iconst(vec_end as i64);
                    self.for_loop(zero, end, lanes as i64, &mut body);
                }
                Visit::List { count, .. } => {
                    self.for_loop(zero, count, 1, &mut |g, k| {
                        let j = g.visit_at(cv, k);
                        body(g, j);
                    });
                }
            }
        }
        if vec_end < cols {
            for &i in is {
                let start = self.iconst(vec_end as i64);
                let end = self.iconst(cols as i64);
                self.for_loop(start, end, 1, &mut |g, j| g.point(stores, At::Syn { i, j, bb, rows, cols }, 1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix–vector products at batch 1

impl<'a, 'm> Gen<'a, 'm> {
    /// The column groups (first columns) of `x[0, ..n]` with some nonzero lane, as a list.
    fn nonzero_groups(&mut self, x: BufId, n: usize) -> Visit {
        let lanes = self.lanes as usize;
        let vec_end = n - n % lanes;
        let addr = self.stack_list(vec_end / lanes);
        let cnt = self.b.declare_var(types::I64);
        let z0 = self.iconst(0);
        self.b.def_var(cnt, z0);
        let start = self.iconst(0);
        let end = self.iconst(vec_end as i64);
        let flags = self.flags(x);
        self.for_loop(start, end, lanes as i64, &mut |g, j| {
            let a = g.access(x, j, lanes as i64, Touch::Load);
            let v = g.b.ins().load(g.vty, flags, a, 0);
            let zc = g.splat_const(0.0, g.lanes);
            let m = g.b.ins().fcmp(FloatCC::NotEqual, v, zc);
            let any = g.b.ins().vany_true(m);
            let k = g.b.use_var(cnt);
            g.guard_list(abi::LIST_NONZERO, k, vec_end / lanes);
            let off = g.b.ins().ishl_imm_u(k, 2);
            let slot = g.b.ins().iadd(addr, off);
            g.b.ins().istore32(MemFlagsData::trusted(), j, slot, 0);
            let keep = g.b.ins().uextend(types::I64, any);
            let k1 = g.b.ins().iadd(k, keep);
            g.b.def_var(cnt, k1);
        });
        let count = self.b.use_var(cnt);
        Visit::List { addr, count, cap: vec_end / lanes, code: abi::LIST_NONZERO }
    }

    /// `out[0, o] (+)= Σ_i x[0, i] w[o, i]` for one sample: `BLOCK_ROWS` rows of `w` per pass,
    /// two vector accumulators per row, fused multiply-adds, and only the column groups where
    /// `x` has a nonzero value (a zero input contributes nothing; see docs/language.md).
    fn matvec(&mut self, out: BufId, x: BufId, w: BufId, n_out: usize, n_in: usize, accumulate: bool) {
        let lanes = self.lanes as usize;
        let vec_end = n_in - n_in % lanes;
        let groups = self.nonzero_groups(x, n_in);
        let Visit::List { addr, count, .. } = groups else { unreachable!("a list") };
        let blocked = (n_out as i64) & -BLOCK_ROWS;
        let zero = self.iconst(0);
        let bend = self.iconst(blocked);
        self.for_loop(zero, bend, BLOCK_ROWS, &mut |g, o| {
            g.matvec_rows(out, x, w, o, BLOCK_ROWS as usize, n_in, vec_end, addr, count, accumulate)
        });
        let start = self.iconst(blocked);
        let end = self.iconst(n_out as i64);
        self.for_loop(start, end, 1, &mut |g, o| g.matvec_rows(out, x, w, o, 1, n_in, vec_end, addr, count, accumulate));
    }

    /// Rows `o .. o + nr` of a batch-1 matrix–vector product.
    fn matvec_rows(
        &mut self,
        out: BufId,
        x: BufId,
        w: BufId,
        o: Value,
        nr: usize,
        n_in: usize,
        vec_end: usize,
        list: Value,
        count: Value,
        accumulate: bool,
    ) {
        let (vty, ty) = (self.vty, self.ty);
        // Read-only for the egraph pass even if another kernel of the entry writes `w` or `x`:
        // nothing writes them during the product, and every address depends on a column
        // index loaded from the list in the same iteration, so no load can be hoisted out of
        // the product or merged with one of another kernel. Pure loads fold into the
        // multiply-adds (fewer registers live, no spills).
        let (xf, wf) = (self.ro_load(), self.ro_load());
        let zv = self.splat_const(0.0, self.lanes);
        // Row starts (element index of w[o + r, 0]).
        let starts: Vec<Value> = (0..nr)
            .map(|r| {
                let row = self.b.ins().iadd_imm_s(o, r as i64);
                self.b.ins().imul_imm_s(row, n_in as i64)
            })
            .collect();
        let accs: Vec<[Variable; 2]> = (0..nr)
            .map(|_| {
                let a = self.b.declare_var(vty);
                let b = self.b.declare_var(vty);
                self.b.def_var(a, zv);
                self.b.def_var(b, zv);
                [a, b]
            })
            .collect();
        // Pairs of column groups, then the odd one.
        let pairs = self.b.ins().band_imm_s(count, -2);
        let zero = self.iconst(0);
        let step = |g: &mut Self, k: Value, u: usize| {
            g.guard_list(abi::LIST_NONZERO, k, vec_end / g.lanes as usize);
            let off = g.b.ins().ishl_imm_u(k, 2);
            let a = g.b.ins().iadd(list, off);
            let j = g.b.ins().uload32(MemFlagsData::trusted(), a, 0);
            let xa = g.access(x, j, g.lanes as i64, Touch::Load);
            let xv = g.b.ins().load(vty, xf, xa, 0);
            for (r, acc) in accs.iter().enumerate() {
                let idx = g.b.ins().iadd(starts[r], j);
                let wa = g.access(w, idx, g.lanes as i64, Touch::Load);
                let wv = g.b.ins().load(vty, wf, wa, 0);
                let s = g.b.use_var(acc[u]);
                let s = g.b.ins().fma(wv, xv, s);
                g.b.def_var(acc[u], s);
            }
        };
        self.for_loop(zero, pairs, 2, &mut |g, k| {
            step(g, k, 0);
            let k1 = g.b.ins().iadd_imm_s(k, 1);
            step(g, k1, 1);
        });
        self.for_loop(pairs, count, 1, &mut |g, k| step(g, k, 0));
        for (r, acc) in accs.iter().enumerate() {
            let a = self.b.use_var(acc[0]);
            let b = self.b.use_var(acc[1]);
            let v = self.b.ins().fadd(a, b);
            let mut s = self.b.ins().extractlane(v, 0);
            for l in 1..self.lanes {
                let e = self.b.ins().extractlane(v, l);
                s = self.b.ins().fadd(s, e);
            }
            // The scalar tail.
            let sv = self.b.declare_var(ty);
            self.b.def_var(sv, s);
            let start = self.iconst(vec_end as i64);
            let end = self.iconst(n_in as i64);
            let row_start = starts[r];
            self.for_loop(start, end, 1, &mut |g, j| {
                let xa = g.access(x, j, 1, Touch::Load);
                let xs = g.b.ins().load(ty, xf, xa, 0);
                let idx = g.b.ins().iadd(row_start, j);
                let wa = g.access(w, idx, 1, Touch::Load);
                let ws = g.b.ins().load(ty, wf, wa, 0);
                let acc = g.b.use_var(sv);
                let r = g.b.ins().fma(ws, xs, acc);
                g.b.def_var(sv, r);
            });
            let mut s = self.b.use_var(sv);
            let row = self.b.ins().iadd_imm_s(o, r as i64);
            let oa = self.access(out, row, 1, Touch::Store);
            if accumulate {
                let old = self.b.ins().load(ty, MemFlagsData::trusted(), oa, 0);
                s = self.b.ins().fadd(old, s);
            }
            self.b.ins().store(MemFlagsData::trusted(), s, oa, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large synapse passes on several threads

/// Synapse passes with at least this many synapses (16 MB of f32 per buffer) are split by rows
/// over threads (`circ_runtime::abi::circ_par_rows`); below it a thread costs more than it saves.
const PAR_MIN_SYNAPSES: usize = 1 << 22;

impl<'a, 'm> Gen<'a, 'm> {
    /// Compiles a blockable synapse pass as a function of a row range,
    /// `fn(bufs, nb, ctx, lo, hi)`, and calls it through the runtime, which splits the rows over
    /// threads. Rows are independent (`blockable`), so the result does not depend on the split.
    fn par_synmap(&mut self, k: &Kernel, rows: usize) {
        let Kernel::SynMap { rows: r, cols, stores, .. } = k else { unreachable!("a synapse pass") };
        let (r, cols) = (*r, *cols);
        let ptr = self.ptr;
        let mut sig = self.module.make_signature();
        for t in [ptr, types::I64, ptr, types::I64, types::I64] {
            sig.params.push(AbiParam::new(t));
        }
        self.subs += 1;
        let fname = format!("circ_rows_{}_{}", self.name, self.subs);
        let id = match self.module.declare_function(&fname, Linkage::Local, &sig) {
            Ok(id) => id,
            Err(e) => {
                self.error.get_or_insert(e.to_string());
                return;
            }
        };
        let mut ctx = self.module.make_context();
        ctx.func = ir::Function::with_name_signature(UserFuncName::user(1, id.as_u32()), sig);
        let mut fctx = FunctionBuilderContext::new();
        {
            let b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let mut g = Gen::new(b, &mut *self.module, self.p, self.helpers, ptr, &fname, self.check);
            g.cur_kernel = self.cur_kernel;
            g.slot_addr = self.slot_addr;
            g.prologue(&Entry { kernels: vec![k.clone()] });
            let blk = g.b.current_block().expect("the prologue's block");
            let (lo, hi) = (g.b.block_params(blk)[3], g.b.block_params(blk)[4]);
            let zero = g.iconst(0);
            g.syn_range(stores, r, cols, zero, Visit::All, Visit::All, lo, hi);
            g.b.ins().return_(&[]);
            g.b.seal_all_blocks();
            let cfg = g.module.target_config();
            g.b.finalize(cfg);
        }
        self.sub_clif.push_str(&format!("; rows of entry {}\n{}\n", self.name, ctx.func.display()));
        if let Err(e) = self.module.define_function(id, &mut ctx) {
            self.error.get_or_insert(format!("Cranelift could not compile `{fname}`: {e:?}"));
            return;
        }
        self.module.clear_context(&mut ctx);
        let fref = self.module.declare_func_in_func(id, self.b.func);
        // Not colocated: JIT code regions need not be within a 32-bit displacement.
        self.b.func.dfg.ext_funcs[fref].colocated = false;
        let fp = self.b.ins().func_addr(ptr, fref);
        let n = self.iconst(rows as i64);
        let (bufs, nb, cx) = (self.bufs_ptr, self.nb, self.ctx_ptr);
        self.call("par_rows", &[fp, bufs, nb, cx, n]);
    }
}
