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

use crate::ast::{BinOp, UnOp};
use crate::hir::{Func, RandKind};
use crate::lir::{Access, BufId, Entry, KExpr, Kernel, Program, RedOp, Store};
use circ_runtime::abi::{self, StepCtx};
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

/// Compiled code of one program.
pub struct Jit {
    module: Option<JITModule>,
    fns: [EntryFn; 4],
    /// CLIF of every entry, before optimisation.
    pub clif: String,
    /// Disassembly of every entry, when requested.
    pub asm: String,
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
        let ptrs = state.pointers();
        // SAFETY: `f` was compiled from a validated program whose buffer shapes are exactly
        // `state.specs` (the state was built from the same program), `ptrs` holds one live
        // pointer per buffer with `max_batch ≥ nb` rows, and `ctx` outlives the call. The
        // code only touches those buffers within their shapes and calls `extern "C"` helpers
        // that do not unwind.
        unsafe { f(ptrs.as_ptr(), nb as i64, ctx as *const StepCtx) };
    }
}

/// Compiles every entry of a program. `want_asm` also keeps the disassembly.
pub fn compile(p: &Program, want_asm: bool) -> Result<Jit, String> {
    p.validate().map_err(|e| format!("internal error: invalid LIR: {e}"))?;
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| e.to_string())?;
    flags.set("is_pic", "false").map_err(|e| e.to_string())?;
    let isa_builder = cranelift_native::builder().map_err(|e| format!("this machine is not supported by Cranelift: {e}"))?;
    let isa = isa_builder.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, ptr) in helper_symbols() {
        jb.symbol(name, ptr);
    }
    let mut module = JITModule::new(jb);
    let helpers = declare_helpers(&mut module, p.precision).map_err(|e| e.to_string())?;
    let mut clif = String::new();
    let mut asm = String::new();
    let mut ids = Vec::new();
    for (name, e) in [("init", &p.init), ("train", &p.train), ("eval", &p.eval), ("monitor", &p.monitor)] {
        let id = compile_entry(&mut module, p, e, name, &helpers, &mut clif, want_asm.then_some(&mut asm))?;
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
    Ok(Jit { module: Some(module), fns: [fns[0], fns[1], fns[2], fns[3]], clif, asm })
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
    ]
}

/// Imported helper functions, by their role (the precision picks `_f32` or `_f64`).
struct Helpers {
    ids: HashMap<&'static str, FuncId>,
}

fn declare_helpers(m: &mut JITModule, prec: Precision) -> Result<Helpers, cranelift_module::ModuleError> {
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
    Ok(Helpers { ids })
}

fn compile_entry(
    module: &mut JITModule,
    p: &Program,
    e: &Entry,
    name: &str,
    helpers: &Helpers,
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
        let mut g = Gen::new(b, module, p, helpers, ptr);
        g.prologue(e);
        for k in &e.kernels {
            g.kernel(k);
        }
        g.b.ins().return_(&[]);
        g.b.seal_all_blocks();
        let cfg = g.module.target_config();
        g.b.finalize(cfg);
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
    iter: Variable,
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
        Kernel::Loop { body, .. } | Kernel::Every { body, .. } => body.iter().for_each(|k| writes_bufs(k, out)),
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
        Kernel::Loop { body, .. } | Kernel::Every { body, .. } => body.iter().for_each(|k| uses_bufs(k, out)),
    }
}

impl<'a, 'm> Gen<'a, 'm> {
    fn new(b: FunctionBuilder<'a>, module: &'m mut JITModule, p: &'m Program, helpers: &'m Helpers, ptr: Type) -> Self {
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
        }
    }

    fn ro() -> MemFlagsData {
        MemFlagsData::trusted().with_readonly().with_can_move()
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
        for bid in used {
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

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// Address of element `idx` (in elements) of buffer `b`.
    fn addr(&mut self, buf: BufId, idx: Value) -> Value {
        let base = self.bases[&buf];
        let bytes = self.b.ins().imul_imm_s(idx, self.es);
        self.b.ins().iadd(base, bytes)
    }

    fn flags(&self, buf: BufId) -> MemFlagsData {
        if self.written.contains(&buf) {
            MemFlagsData::trusted()
        } else {
            Self::ro()
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
                // Row (iter · nb + b) of the history: the value recorded at this iteration.
                let it = self.b.use_var(self.iter);
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
        let addr = self.addr(buf, idx);
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
            let addr = self.addr(buf, idx);
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
        let mut cache = HashMap::new();
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

    fn kernel(&mut self, k: &Kernel) {
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
                    let addr = g.addr(out, b);
                    g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                });
            }
            Kernel::SynMap { rows, cols, over_batch, stores } => {
                let nbb = self.rows_value(*over_batch);
                let zero = self.iconst(0);
                let (rows, cols) = (*rows, *cols);
                self.for_loop(zero, nbb, 1, &mut |g, bb| {
                    let z = g.iconst(0);
                    let re = g.iconst(rows as i64);
                    g.for_loop(z, re, 1, &mut |g, i| {
                        g.columns(cols, &mut |g, j, lanes| g.point(stores, At::Syn { i, j, bb, rows, cols }, lanes));
                    });
                });
            }
            Kernel::SynReduce { out, row, op, rows, cols, value } => {
                let (out, op, rows, cols) = (*out, *op, *rows, *cols);
                let bb = self.iconst(0);
                if *row {
                    let z = self.iconst(0);
                    let re = self.iconst(rows as i64);
                    self.for_loop(z, re, 1, &mut |g, i| {
                        let r = g.reduce_row(op, value, cols, &|j| At::Syn { i, j, bb, rows, cols });
                        let addr = g.addr(out, i);
                        g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                    });
                } else {
                    // out[j] = identity; then out[j] = op(out[j], v(i, j)) row by row.
                    self.columns(cols, &mut |g, j, lanes| {
                        let init = g.reduce_init(op, lanes);
                        let addr = g.addr(out, j);
                        g.b.ins().store(MemFlagsData::trusted(), init, addr, 0);
                    });
                    let z = self.iconst(0);
                    let re = self.iconst(rows as i64);
                    self.for_loop(z, re, 1, &mut |g, i| {
                        g.columns(cols, &mut |g, j, lanes| {
                            let mut cache = HashMap::new();
                            let v = g.expr(value, At::Syn { i, j, bb, rows, cols }, lanes, &mut cache);
                            let addr = g.addr(out, j);
                            let t = if lanes == 1 { g.ty } else { g.vty };
                            let acc = g.b.ins().load(t, MemFlagsData::trusted(), addr, 0);
                            let r = g.reduce_step(op, acc, v, lanes);
                            g.b.ins().store(MemFlagsData::trusted(), r, addr, 0);
                        });
                    });
                }
            }
            Kernel::MatMul { out, x, w, n_out, n_in, transpose, accumulate } => {
                let (y, xb, wb) = (self.bases[out], self.bases[x], self.bases[w]);
                let args = [
                    y,
                    xb,
                    wb,
                    self.nb,
                    self.iconst(*n_out as i64),
                    self.iconst(*n_in as i64),
                    self.iconst(*transpose as i64),
                    self.iconst(*accumulate as i64),
                ];
                self.call("matmul", &args);
            }
            Kernel::Outer { out, p, q, rows, cols, mean, repeat } => {
                let scale = if *mean { self.inv_nb } else { self.fconst(1.0) };
                // A history spans `repeat` batches of rows; the mean is still over the batch.
                let n = self.b.ins().imul_imm_s(self.nb, *repeat as i64);
                let args = [
                    self.bases[out],
                    self.bases[p],
                    self.bases[q],
                    n,
                    self.iconst(*rows as i64),
                    self.iconst(*cols as i64),
                    scale,
                    self.iconst(0),
                ];
                self.call("outer", &args);
            }
            Kernel::BatchSum { out, src, cols, mean, repeat } => {
                let scale = if *mean { self.inv_nb } else { self.fconst(1.0) };
                let n = self.b.ins().imul_imm_s(self.nb, *repeat as i64);
                let args = [self.bases[out], self.bases[src], n, self.iconst(*cols as i64), scale, self.iconst(0)];
                self.call("batch_sum", &args);
            }
            Kernel::Copy { dst, src, len } => {
                let (d, s) = (self.bases[dst], self.bases[src]);
                let size = self.iconst(*len as i64 * self.es);
                let cfg = self.module.target_config();
                self.b.call_memcpy(cfg, d, s, size);
            }
            Kernel::Loop { count, reverse, body } => {
                let saved = self.b.use_var(self.iter);
                let zero = self.iconst(0);
                let end = self.iconst(*count as i64);
                let (count, reverse) = (*count as i64, *reverse);
                self.for_loop(zero, end, 1, &mut |g, it| {
                    // A backward loop counts its iterations down: count − 1 − it.
                    let it = if reverse {
                        let last = g.iconst(count - 1);
                        g.b.ins().isub(last, it)
                    } else {
                        it
                    };
                    g.b.def_var(g.iter, it);
                    for k in body {
                        g.kernel(k);
                    }
                });
                self.b.def_var(self.iter, saved);
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
