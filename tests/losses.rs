//! GAN losses against T7 (docs/algorithm.md §5, §15) and the WGAN-GP gradient penalty (our
//! extension, docs/algorithm.md Q14) against closed forms.
use qs_attn::losses::{gan_loss, gradient_penalty, GanMode};
use tch::{Device, Kind, Tensor};

mod common;
use common::seeded;

fn randn(seed: i64, shape: &[i64]) -> Tensor {
    seeded(seed, || Tensor::randn(shape, (Kind::Double, Device::Cpu)))
}

fn value(t: &Tensor) -> f64 {
    assert_eq!(t.dim(), 0, "a scalar loss");
    t.double_value(&[])
}

fn assert_rel(what: &str, got: f64, expected: f64, rtol: f64) {
    assert!((got - expected).abs() <= rtol * expected.abs().max(1e-12), "{what}: {got} vs {expected}");
}

/// T7's prediction `[[0.5, −1], [2, 0]]` as 1×1×2×2.
fn t7_pred() -> Tensor {
    Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).view([1, 1, 2, 2])
}

#[test]
fn gan_losses_match_t7() {
    let pred = t7_pred();
    let cases = [
        (GanMode::Lsgan, 1.5625, 1.3125),
        (GanMode::Vanilla, 0.6518534, 1.0268536),
        (GanMode::Nonsaturating, 0.6518534, 1.0268536),
        (GanMode::Wgangp, -0.375, 0.375),
    ];
    for (mode, real, fake) in cases {
        assert_rel(&format!("{mode:?} real"), value(&gan_loss(mode, &pred, true).unwrap()), real, 1e-6);
        assert_rel(&format!("{mode:?} fake"), value(&gan_loss(mode, &pred, false).unwrap()), fake, 1e-6);
    }
}

#[test]
fn gan_losses_reduce_over_the_batch() {
    // B = 3 patch maps: every mode is the mean over all elements (nonsaturating: per-sample
    // means, then their mean, which is the same for equal-sized samples).
    let pred = randn(1, &[3, 1, 4, 5]) * 2.0;
    let softplus = |t: Tensor| t.softplus().mean(Kind::Double).double_value(&[]);
    let real_sp = softplus(-&pred);
    let fake_sp = softplus(pred.shallow_clone());
    let mean = pred.mean(Kind::Double).double_value(&[]);
    let lsgan_real = (&pred - 1.0).square().mean(Kind::Double).double_value(&[]);
    let lsgan_fake = pred.square().mean(Kind::Double).double_value(&[]);
    let checks = [
        (GanMode::Lsgan, lsgan_real, lsgan_fake),
        (GanMode::Vanilla, real_sp, fake_sp),
        (GanMode::Nonsaturating, real_sp, fake_sp),
        (GanMode::Wgangp, -mean, mean),
    ];
    for (mode, real, fake) in checks {
        assert_rel(&format!("{mode:?} real"), value(&gan_loss(mode, &pred, true).unwrap()), real, 1e-12);
        assert_rel(&format!("{mode:?} fake"), value(&gan_loss(mode, &pred, false).unwrap()), fake, 1e-12);
    }
    // The loss is differentiable w.r.t. the prediction: d/dp mean((p − 1)²) = 2(p − 1)/n.
    let p = pred.set_requires_grad(true);
    let g = Tensor::run_backward(&[gan_loss(GanMode::Lsgan, &p, true).unwrap()], &[&p], false, false).remove(0);
    let expected = (&p - 1.0).detach() * (2.0 / 60.0);
    assert!((g - expected).abs().max().double_value(&[]) < 1e-15);
}

#[test]
fn gan_mode_parses() {
    assert_eq!("lsgan".parse::<GanMode>().unwrap(), GanMode::Lsgan);
    assert_eq!("vanilla".parse::<GanMode>().unwrap(), GanMode::Vanilla);
    assert_eq!("nonsaturating".parse::<GanMode>().unwrap(), GanMode::Nonsaturating);
    assert_eq!("wgangp".parse::<GanMode>().unwrap(), GanMode::Wgangp);
    assert!("hinge".parse::<GanMode>().is_err());
}

#[test]
fn gradient_penalty_of_a_linear_critic() {
    // D(x) = Σ w·x per sample: ∂D/∂x̂ = w for every α, so the penalty is λ(‖w‖ − 1)² exactly,
    // and d/dw λ(‖w‖ − 1)² = 2λ(‖w‖ − 1)·w/‖w‖.
    let w = (randn(2, &[1, 2, 3, 3]) * 0.7).set_requires_grad(true);
    let (real, fake) = (randn(3, &[4, 2, 3, 3]), randn(4, &[4, 2, 3, 3]));
    let lambda = 10.0;
    let d = |x: &Tensor| (x * &w).f_sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Double);
    let gp = seeded(5, || gradient_penalty(&d, &real, &fake, lambda)).unwrap();
    let norm = w.detach().square().sum(Kind::Double).sqrt().double_value(&[]);
    assert_rel("penalty", value(&gp), lambda * (norm - 1.0).powi(2), 1e-12);

    let grad = Tensor::run_backward(&[&gp], &[&w], false, false).remove(0);
    let expected = w.detach() * (2.0 * lambda * (norm - 1.0) / norm);
    let err = (grad - &expected).abs().max().double_value(&[]);
    assert!(err <= 1e-12 * expected.abs().max().double_value(&[]), "gradient error {err:e}");
}

#[test]
fn gradient_penalty_interpolates_per_sample() {
    // D(x) = Σ x² per sample: ∂D/∂x̂ = 2x̂, with x̂_b = α_b·real_b + (1 − α_b)·fake_b and α drawn
    // first from torch's RNG (so the same seed reproduces it here).
    let (real, fake) = (randn(6, &[3, 2, 4, 4]), randn(7, &[3, 2, 4, 4]));
    let d = |x: &Tensor| x.square().f_sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Double);
    let gp = seeded(8, || gradient_penalty(&d, &real, &fake, 2.0)).unwrap();
    let alpha = seeded(8, || Tensor::rand([3, 1, 1, 1], (Kind::Double, Device::Cpu)));
    let x_hat = &alpha * &real + (alpha.ones_like() - &alpha) * &fake;
    let norms = (x_hat * 2.0).flatten(1, -1).square().sum_dim_intlist(1, false, Kind::Double).sqrt();
    let expected = ((norms - 1.0).square().mean(Kind::Double) * 2.0).double_value(&[]);
    assert_rel("penalty", value(&gp), expected, 1e-12);
    let spread = alpha.max().double_value(&[]) - alpha.min().double_value(&[]);
    assert!(spread > 0.0, "one α per sample");
}

#[test]
fn gradient_penalty_rejects_bad_input() {
    let d = |x: &Tensor| x.f_sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Double);
    let real = randn(9, &[2, 1, 2, 2]);
    assert!(gradient_penalty(&d, &real, &randn(9, &[3, 1, 2, 2]), 1.0).is_err(), "shape mismatch");
    assert!(gradient_penalty(&d, &real, &real.to_kind(Kind::Float), 1.0).is_err(), "kind mismatch");
    assert!(gradient_penalty(&d, &real, &real, f64::INFINITY).is_err(), "lambda");
    let constant = |x: &Tensor| Ok(Tensor::zeros([x.size()[0]], (Kind::Double, Device::Cpu)).set_requires_grad(true));
    assert!(gradient_penalty(&constant, &real, &real, 1.0).is_err(), "D does not depend on its input");
}

/// The built-in PatchNCE part's losses of several groups in one pass equal one call per
/// group, values and gradients; groups of differing shapes take one call each.
#[test]
fn patch_nce_groups_in_one_pass_equal_one_call_per_group() {
    use qs_attn::train::parts::{NceLossPart, PatchNce};
    let nce = PatchNce { tau: 0.07 };
    let rows = |seed: i64, n: i64| (randn(seed, &[2 * n, 8]) * 0.5).set_requires_grad(true);
    for shapes in [[4i64, 4, 4], [4, 3, 4]] {
        let groups: Vec<(Tensor, Tensor)> =
            shapes.iter().enumerate().map(|(g, &n)| (rows(2 * g as i64, n), rows(2 * g as i64 + 1, n))).collect();
        let together = nce.losses(&groups, 2).unwrap();
        assert_eq!(together.size(), [3]);
        let weights = Tensor::from_slice(&[1.0f64, -2.0, 0.5]);
        (&together * &weights).sum(Kind::Double).backward();
        let grads: Vec<Tensor> = groups.iter().map(|(q, _)| q.grad().copy()).collect();
        for (g, (q, k)) in groups.iter().enumerate() {
            let (q1, k1) = (q.detach().set_requires_grad(true), k.detach().set_requires_grad(true));
            let alone = nce.loss(&q1, &k1, 2).unwrap();
            assert_rel(&format!("{shapes:?} group {g}"), together.double_value(&[g as i64]), value(&alone), 1e-12);
            (alone * weights.double_value(&[g as i64])).backward();
            let diff = (q1.grad() - &grads[g]).abs().max().double_value(&[]);
            assert!(diff < 1e-12, "{shapes:?} group {g}: gradient differs by {diff}");
        }
    }
}
