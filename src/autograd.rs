//! Custom autograd nodes implemented in Rust.
//!
//! An op implements [`AutogradOp`] (forward and an analytic backward on `tch::Tensor`s) and is run
//! with [`apply`]. The C++ side (`csrc/autograd_bridge.cpp`) wraps it in a
//! `torch::autograd::Function`, so the node is an ordinary member of libtorch's autograd graph:
//! it works from pure Rust (`Tensor::backward`) and from Python (`torch.Tensor.backward`,
//! `torch.autograd.grad`, `gradcheck`) alike, and shares the graph with any other torch code.
//!
//! Rules for implementors:
//! * `forward` runs with grad mode off; it may save tensors (inputs or outputs) for backward with
//!   [`ForwardContext::save_for_backward`] and mark integer or index outputs non-differentiable.
//! * `backward` runs on autograd's worker thread, without the Python GIL, under no-grad (unless
//!   [`AutogradOp::differentiable_backward`]). It gets
//!   one optional gradient per output (`None` when the output did not take part in the loss) and
//!   returns one optional gradient per input; return `None` where
//!   [`BackwardContext::needs_input_grad`] is false (or the input is not differentiable).
//! * Errors (`Err`) and panics in either pass become a `TchError` in Rust and a Python exception;
//!   they never abort the process.
use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

/// Forward and analytic backward of one differentiable op.
pub trait AutogradOp: Send + 'static {
    /// Short name used in error messages.
    fn name(&self) -> &'static str;
    /// Computes the outputs from the (borrowed) inputs. Grad mode is off.
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError>;
    /// Gradients of the inputs given the gradients of the outputs (`None` = zero).
    fn backward(&self, ctx: &BackwardContext, grad_outputs: &[Option<Tensor>])
        -> Result<Vec<Option<Tensor>>, TchError>;
    /// Whether `backward` may itself be differentiated: it computes the input gradients with
    /// differentiable tensor operations only (a linear op whose backward is its adjoint, say).
    /// Then it runs in the caller's grad mode, so `create_graph=True` gets a graph through it
    /// (gradient penalties). Otherwise (the default) it runs under no-grad and its gradients
    /// refuse to be differentiated again.
    fn differentiable_backward(&self) -> bool {
        false
    }
}

/// What forward tells autograd besides its outputs.
#[derive(Default)]
pub struct ForwardContext {
    saved: Vec<Tensor>,
    non_differentiable: Vec<usize>,
}

impl ForwardContext {
    /// Keeps tensors (inputs or outputs of this op) for backward, in order; see
    /// [`BackwardContext::saved`]. Stored as autograd `SavedVariable`s, so saving an output
    /// creates no reference cycle and in-place modification is detected.
    pub fn save_for_backward(&mut self, tensors: impl IntoIterator<Item = Tensor>) {
        self.saved.extend(tensors);
    }
    /// Output `index` carries no gradient (e.g. selected indices).
    pub fn mark_non_differentiable(&mut self, index: usize) {
        self.non_differentiable.push(index);
    }
}

/// What backward receives besides the output gradients.
pub struct BackwardContext {
    saved: Vec<Tensor>,
    needs_input_grad: Vec<bool>,
}

impl BackwardContext {
    /// The tensors saved in forward, in the order they were saved.
    pub fn saved(&self) -> &[Tensor] {
        &self.saved
    }
    /// Whether input `index` needs a gradient.
    pub fn needs_input_grad(&self, index: usize) -> bool {
        self.needs_input_grad.get(index).copied().unwrap_or(false)
    }
}

/// While alive, autocast is off on this thread: the ops compute in the dtype they choose
/// (float32 for half/bfloat16 inputs), not in autocast's lower precision. Every public op and
/// both passes of every node hold one.
pub struct NoAutocast(*mut c_void);

impl NoAutocast {
    pub fn new() -> Self {
        NoAutocast(unsafe { qs_autocast_guard_begin() })
    }
}

impl Default for NoAutocast {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoAutocast {
    fn drop(&mut self) {
        unsafe { qs_autocast_guard_end(self.0) }
    }
}

/// `x` as autocast hands it to a convolution: cast (differentiably) to autocast's dtype where
/// autocast is on for `x`'s device, else `x` itself. For nodes that wrap a convolution, whose
/// passes run with autocast off ([`NoAutocast`]): cast before [`apply`], the node computes in
/// the dtype the plain op would.
pub fn autocast_conv_input(x: &Tensor) -> Result<Tensor, TchError> {
    unsafe { crate::error::tensor_from_c("autocast", |error| qs_autocast_conv_input(x.as_ptr(), error)) }
}

/// Runs `op` on `inputs` as a node of the autograd graph and returns its outputs.
pub fn apply<O: AutogradOp>(op: O, inputs: &[&Tensor]) -> Result<Vec<Tensor>, TchError> {
    let boxed: Box<Box<dyn AutogradOp>> = Box::new(Box::new(op));
    let op_ptr = Box::into_raw(boxed) as *mut c_void;
    let ptrs: Vec<*const C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
    let sink = Sink::new();
    // Ownership of `op_ptr` passes to C++ (dropped through `qs_rs_op_drop`).
    unsafe { qs_autograd_apply(op_ptr, ptrs.as_ptr(), ptrs.len() as i64, sink.0) };
    if let Some(msg) = sink.error() {
        return Err(TchError::Torch(msg));
    }
    Ok(sink.take_all().into_iter().map(|t| t.expect("forward outputs are defined")).collect())
}

// ----------------------------------------------------------------------------------------------
// FFI plumbing
// ----------------------------------------------------------------------------------------------

#[repr(C)]
struct QsSink {
    _private: [u8; 0],
}

extern "C" {
    fn qs_autocast_guard_begin() -> *mut c_void;
    fn qs_autocast_guard_end(guard: *mut c_void);
    fn qs_autocast_conv_input(t: *const C_tensor, error: *mut *const c_char) -> *mut C_tensor;
    fn qs_autograd_apply(op: *mut c_void, inputs: *const *const C_tensor, n: i64, out: *mut QsSink);
    fn qs_sink_new() -> *mut QsSink;
    fn qs_sink_free(s: *mut QsSink);
    fn qs_sink_push(s: *mut QsSink, t: *mut C_tensor);
    fn qs_sink_push_saved(s: *mut QsSink, t: *mut C_tensor);
    fn qs_sink_mark_non_differentiable(s: *mut QsSink, index: i64);
    fn qs_sink_set_error(s: *mut QsSink, msg: *const c_char);
    fn qs_sink_error(s: *const QsSink) -> *const c_char;
    fn qs_sink_len(s: *const QsSink) -> i64;
    fn qs_sink_take(s: *mut QsSink, i: i64) -> *mut C_tensor;
}

/// An owned C++ `QsSink` (used for the results of `qs_autograd_apply`).
struct Sink(*mut QsSink);

impl Sink {
    fn new() -> Self {
        Sink(unsafe { qs_sink_new() })
    }
    fn error(&self) -> Option<String> {
        let p = unsafe { qs_sink_error(self.0) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
    fn take_all(&self) -> Vec<Option<Tensor>> {
        let n = unsafe { qs_sink_len(self.0) };
        (0..n)
            .map(|i| {
                let p = unsafe { qs_sink_take(self.0, i) };
                (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p) })
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        unsafe { qs_sink_free(self.0) }
    }
}

/// A shallow copy (same storage and autograd metadata) of a tensor borrowed from C++.
unsafe fn borrow(p: *const C_tensor) -> Tensor {
    Tensor::clone_from_ptr(p as *mut C_tensor)
}

/// Hands ownership of a tensor to C++ (a tch tensor is a heap `at::Tensor*`).
fn into_raw(t: Tensor) -> *mut C_tensor {
    ManuallyDrop::new(t).as_mut_ptr()
}

fn set_error(sink: *mut QsSink, msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    unsafe { qs_sink_set_error(sink, c.as_ptr()) };
}

/// Runs `f`, turning an `Err` or a panic into a message in `sink`; true on success.
fn guarded(sink: *mut QsSink, f: impl FnOnce() -> Result<(), TchError>) -> bool {
    let msg = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => crate::error::message(&e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            format!("panic in Rust: {what}")
        }
    };
    set_error(sink, &msg);
    false
}

unsafe fn op_ref<'a>(op: *mut c_void) -> &'a mut Box<dyn AutogradOp> {
    &mut *(op as *mut Box<dyn AutogradOp>)
}

#[no_mangle]
extern "C" fn qs_rs_op_forward(op: *mut c_void, inputs: *const *const C_tensor, n: i64, sink: *mut QsSink) -> bool {
    guarded(sink, || {
        let _no_autocast = NoAutocast::new();
        let op = unsafe { op_ref(op) };
        let inputs: Vec<Tensor> = (0..n as usize).map(|i| unsafe { borrow(*inputs.add(i)) }).collect();
        let mut ctx = ForwardContext::default();
        let outputs = op.forward(&mut ctx, &inputs)?;
        for &i in &ctx.non_differentiable {
            if i >= outputs.len() {
                return Err(TchError::Torch(format!(
                    "{}: output {i} marked non-differentiable but only {} outputs",
                    op.name(),
                    outputs.len()
                )));
            }
        }
        for t in outputs {
            unsafe { qs_sink_push(sink, into_raw(t)) };
        }
        for t in ctx.saved {
            unsafe { qs_sink_push_saved(sink, into_raw(t)) };
        }
        for i in ctx.non_differentiable {
            unsafe { qs_sink_mark_non_differentiable(sink, i as i64) };
        }
        Ok(())
    })
}

#[no_mangle]
extern "C" fn qs_rs_op_backward(
    op: *mut c_void,
    saved: *const *const C_tensor,
    n_saved: i64,
    grads: *const *const C_tensor,
    n_grads: i64,
    needs_input_grad: *const bool,
    n_inputs: i64,
    sink: *mut QsSink,
) -> bool {
    guarded(sink, || {
        let _no_autocast = NoAutocast::new();
        let op = unsafe { op_ref(op) };
        let saved: Vec<Tensor> = (0..n_saved as usize).map(|i| unsafe { borrow(*saved.add(i)) }).collect();
        let grads: Vec<Option<Tensor>> = (0..n_grads as usize)
            .map(|i| {
                let p = unsafe { *grads.add(i) };
                (!p.is_null()).then(|| unsafe { borrow(p) })
            })
            .collect();
        let needs: Vec<bool> = (0..n_inputs as usize).map(|i| unsafe { *needs_input_grad.add(i) }).collect();
        let ctx = BackwardContext { saved, needs_input_grad: needs };
        let input_grads = op.backward(&ctx, &grads)?;
        if input_grads.len() != n_inputs as usize {
            return Err(TchError::Torch(format!(
                "{}: backward returned {} gradients for {n_inputs} inputs",
                op.name(),
                input_grads.len()
            )));
        }
        for g in input_grads {
            unsafe { qs_sink_push(sink, g.map_or(std::ptr::null_mut(), into_raw)) };
        }
        Ok(())
    })
}

#[no_mangle]
extern "C" fn qs_rs_op_drop(op: *mut c_void) {
    // Never unwind into C++.
    let _ = catch_unwind(|| drop(unsafe { Box::from_raw(op as *mut Box<dyn AutogradOp>) }));
}

#[no_mangle]
extern "C" fn qs_rs_op_backward_is_differentiable(op: *mut c_void) -> bool {
    catch_unwind(|| unsafe { op_ref(op) }.differentiable_backward()).unwrap_or(false)
}

#[no_mangle]
extern "C" fn qs_rs_op_name(op: *mut c_void) -> *const c_char {
    // Names are 'static str without NUL; leak-free conversion through a static cache would be
    // overkill: the C++ side copies the string immediately.
    thread_local!(static NAME: std::cell::RefCell<CString> = std::cell::RefCell::new(CString::default()));
    let name = unsafe { op_ref(op) }.name();
    NAME.with(|n| {
        *n.borrow_mut() = CString::new(name).unwrap_or_default();
        n.borrow().as_ptr()
    })
}
