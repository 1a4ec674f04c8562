//! The pieces of the CUDA-graph step that work on any device, tested on the CPU: recorded
//! patch-id draws refilled before each replay, and Adam with its step count and learning rate
//! held in device tensors. (The capture itself needs a GPU: tests/python/test_cuda_training.py.)
use qs_attn::ops::PatchSampler;
use qs_attn::train::adam::Adam;
use tch::{Device, Kind, Tensor};

/// The draws of one "step": a shared id set, a per-image one, and one with N > P.
fn draw_step(sampler: &mut PatchSampler) -> Vec<Tensor> {
    vec![
        sampler.sample(4096, 256, 2, false, Device::Cpu).unwrap(),
        sampler.sample(1024, 64, 3, true, Device::Cpu).unwrap(),
        sampler.sample(10, 256, 1, false, Device::Cpu).unwrap(),
    ]
}

#[test]
fn recorded_draws_refilled_per_replay_equal_eager_draws() {
    let mut eager = PatchSampler::new(42);
    let mut graphed = PatchSampler::new(42);
    graphed.record_draws();
    let buffers = draw_step(&mut graphed);
    let draws = graphed.finish_recording();
    assert_eq!(graphed.state(), PatchSampler::new(42).state(), "recording consumes no randomness");
    for (buffer, shape) in buffers.iter().zip([vec![256], vec![3, 64], vec![10]]) {
        assert_eq!(buffer.size(), shape);
        assert_eq!(buffer.kind(), Kind::Int64);
    }
    for iteration in 0..3 {
        let expected = draw_step(&mut eager);
        graphed.redraw(&draws).unwrap();
        for (slot, (got, want)) in buffers.iter().zip(&expected).enumerate() {
            assert!(got.equal(want), "iteration {iteration}, draw {slot}: the buffer holds other ids than an eager draw");
        }
        assert_eq!(graphed.state(), eager.state());
    }
    // after recording, sample() draws again
    assert!(graphed.sample(100, 5, 1, false, Device::Cpu).unwrap().equal(&eager.sample(100, 5, 1, false, Device::Cpu).unwrap()));
}

/// Adam written out (Kingma & Ba, torch.optim.Adam's form): m, v, p updated in place.
fn adam_update(p: &mut Tensor, m: &mut Tensor, v: &mut Tensor, g: &Tensor, t: i64, lr: f64) {
    let (b1, b2, eps) = (0.5, 0.999, 1e-8);
    *m = &*m * b1 + g * (1.0 - b1);
    *v = &*v * b2 + g * g * (1.0 - b2);
    let step_size = lr / (1.0 - b1.powi(t as i32));
    let denom = v.sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + eps;
    *p = &*p - &*m / denom * step_size;
}

#[test]
fn adam_with_state_on_the_device_follows_the_update_rule() {
    let p0 = Tensor::from_slice(&[0.3f32, -1.2, 2.0, 0.05]);
    let param = p0.copy().set_requires_grad(true);
    let mut adam = Adam::new(vec![("w".to_string(), param.shallow_clone())], 2e-3, 0.5, 0.999);
    adam.keep_state_on_device();
    let (mut p, mut m, mut v) = (p0.to_kind(Kind::Double), Tensor::zeros([4], (Kind::Double, Device::Cpu)), Tensor::zeros([4], (Kind::Double, Device::Cpu)));
    let mut lr = 2e-3;
    for t in 1..=6 {
        if t == 4 {
            lr = 5e-4; // a schedule change reaches the device copy
            adam.set_lr(lr);
        }
        let grad = Tensor::from_slice(&[0.1f32 * t as f32, -0.4, 0.02, 1.5 / t as f32]);
        let mut g = param.grad();
        if g.defined() {
            tch::no_grad(|| g.copy_(&grad));
        } else {
            // first step: create the gradient through a backward
            (&param * &grad).sum(Kind::Float).backward();
        }
        adam.step().unwrap();
        adam_update(&mut p, &mut m, &mut v, &grad.to_kind(Kind::Double), t, lr);
        // float32 parameters and a float32 learning rate on the device
        let diff = (param.to_kind(Kind::Double) - &p).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "step {t}: {diff}");
    }
    let (_, steps) = adam.state();
    assert_eq!(steps, 6);
    // restoring a state resets the device step count: the next update is the 2nd one
    let (state, _) = adam.state();
    let state: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
    let (mut p2, mut m2, mut v2) = (param.to_kind(Kind::Double), state["exp_avg.w"].to_kind(Kind::Double), state["exp_avg_sq.w"].to_kind(Kind::Double));
    adam.load_state(&state, 1).unwrap();
    let grad = param.grad().copy();
    adam.step().unwrap();
    adam_update(&mut p2, &mut m2, &mut v2, &grad.to_kind(Kind::Double), 2, lr);
    let diff = (param.to_kind(Kind::Double) - &p2).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "after load_state: {diff}");
}
