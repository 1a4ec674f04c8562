//! The custom-autograd bridge from pure Rust (no Python): several inputs and outputs, saved
//! tensors, non-differentiable outputs, needs_input_grad, errors and panics.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use qs_attn::autograd::{apply, AutogradOp, BackwardContext, ForwardContext};
use tch::{Kind, TchError, Tensor};

/// y1 = a·b, y2 = a + 2b, y3 = argmax(a) (integer, non-differentiable).
struct MulAdd {
    backward_calls: Arc<AtomicUsize>,
    needs_seen: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl AutogradOp for MulAdd {
    fn name(&self) -> &'static str {
        "mul_add"
    }
    fn forward(&mut self, ctx: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        let (a, b) = (&inputs[0], &inputs[1]);
        ctx.save_for_backward([a.shallow_clone(), b.shallow_clone()]);
        ctx.mark_non_differentiable(2);
        Ok(vec![a * b, a + b * 2.0, a.argmax(None, false)])
    }
    fn backward(&self, ctx: &BackwardContext, grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        self.backward_calls.fetch_add(1, Ordering::SeqCst);
        *self.needs_seen.lock().unwrap() = vec![ctx.needs_input_grad(0), ctx.needs_input_grad(1)];
        assert!(grads[2].is_none(), "the integer output never receives a gradient");
        let [a, b] = ctx.saved() else { panic!("two saved tensors") };
        let zeros = || a.zeros_like();
        let g1 = grads[0].as_ref().map_or_else(zeros, |g| g.shallow_clone());
        let g2 = grads[1].as_ref().map_or_else(zeros, |g| g.shallow_clone());
        let da = ctx.needs_input_grad(0).then(|| &g1 * b + &g2);
        let db = ctx.needs_input_grad(1).then(|| &g1 * a + &g2 * 2.0);
        Ok(vec![da, db])
    }
}

fn mul_add() -> (MulAdd, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<bool>>>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let needs = Arc::new(std::sync::Mutex::new(vec![]));
    (MulAdd { backward_calls: calls.clone(), needs_seen: needs.clone() }, calls, needs)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

#[test]
fn several_inputs_outputs_and_saved_tensors() {
    let a = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[0.5f64, 4.0, -1.0]).set_requires_grad(true);
    let (op, calls, needs) = mul_add();
    let out = apply(op, &[&a, &b]).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(values(&out[0]), vec![0.5, -8.0, -3.0]);
    assert_eq!(values(&out[1]), vec![2.0, 6.0, 1.0]);
    assert_eq!(out[2].int64_value(&[]), 2);
    assert!(out[0].requires_grad() && out[1].requires_grad());
    assert!(!out[2].requires_grad(), "index output is non-differentiable");
    // L = Σ 3·y1 + Σ y2  →  dL/da = 3b + 1, dL/db = 3a + 2
    let loss = (&out[0] * 3.0).sum(Kind::Double) + out[1].sum(Kind::Double);
    loss.backward();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(*needs.lock().unwrap(), vec![true, true]);
    assert_eq!(values(&a.grad()), vec![2.5, 13.0, -2.0]);
    assert_eq!(values(&b.grad()), vec![5.0, -4.0, 11.0]);
}

#[test]
fn unused_output_gets_none_and_needs_input_grad_is_reported() {
    let a = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[3.0f64, 4.0]); // no grad needed
    let (op, _, needs) = mul_add();
    let out = apply(op, &[&a, &b]).unwrap();
    out[1].sum(Kind::Double).backward(); // y1 unused → its gradient arrives as None
    assert_eq!(*needs.lock().unwrap(), vec![true, false]);
    assert_eq!(values(&a.grad()), vec![1.0, 1.0]);
    assert!(!b.grad().defined());
}

#[test]
fn no_grad_inputs_build_no_node() {
    let a = Tensor::from_slice(&[1.0f32, 2.0]);
    let b = Tensor::from_slice(&[3.0f32, 4.0]);
    let (op, _, _) = mul_add();
    let out = apply(op, &[&a, &b]).unwrap();
    assert!(!out[0].requires_grad());
    assert_eq!(values(&out[0]), vec![3.0, 8.0]);
}

struct Failing {
    panic: bool,
    in_backward: bool,
}

impl AutogradOp for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }
    fn forward(&mut self, _: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
        if !self.in_backward {
            if self.panic {
                panic!("boom in forward");
            }
            return Err(TchError::Torch("bad forward input".into()));
        }
        Ok(vec![&inputs[0] * 2.0])
    }
    fn backward(&self, _: &BackwardContext, _: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
        if self.panic {
            panic!("boom in backward");
        }
        Err(TchError::Torch("bad backward state".into()))
    }
}

#[test]
fn forward_errors_and_panics_become_tch_errors() {
    let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
    let err = apply(Failing { panic: false, in_backward: false }, &[&x]).unwrap_err();
    assert!(err.to_string().contains("bad forward input"), "{err}");
    let err = apply(Failing { panic: true, in_backward: false }, &[&x]).unwrap_err();
    assert!(err.to_string().contains("boom in forward"), "{err}");
}

#[test]
fn backward_errors_and_panics_become_tch_errors() {
    for panic in [false, true] {
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let y = apply(Failing { panic, in_backward: true }, &[&x]).unwrap().remove(0);
        let err = y.sum(Kind::Float).f_backward().unwrap_err().to_string();
        let expected = if panic { "boom in backward" } else { "bad backward state" };
        assert!(err.contains(expected) && err.contains("failing backward"), "{err}");
    }
}

#[test]
fn op_objects_are_dropped_with_the_graph() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl AutogradOp for Counted {
        fn name(&self) -> &'static str {
            "counted"
        }
        fn forward(&mut self, _: &mut ForwardContext, inputs: &[Tensor]) -> Result<Vec<Tensor>, TchError> {
            Ok(vec![&inputs[0] + 1.0])
        }
        fn backward(&self, _: &BackwardContext, g: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, TchError> {
            Ok(vec![g[0].as_ref().map(|g| g.shallow_clone())])
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
    let y = apply(Counted(drops.clone()), &[&x]).unwrap().remove(0);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "alive while the graph is");
    drop(y);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped exactly once with the graph");
}

#[test]
fn gradients_match_on_cuda_when_available() {
    if !tch::Cuda::is_available() {
        return;
    }
    let dev = tch::Device::Cuda(0);
    let a = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).to_device(dev).set_requires_grad(true);
    let b = Tensor::from_slice(&[0.5f64, 4.0, -1.0]).to_device(dev).set_requires_grad(true);
    let (op, _, _) = mul_add();
    let out = apply(op, &[&a, &b]).unwrap();
    ((&out[0] * 3.0).sum(Kind::Double) + out[1].sum(Kind::Double)).backward();
    assert_eq!(values(&a.grad().to_device(tch::Device::Cpu)), vec![2.5, 13.0, -2.0]);
}
