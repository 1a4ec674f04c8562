//! The ops from pure Rust against plain tch compositions of their maths (docs/algorithm.md §8,
//! §9; autograd for the reference gradients), in float64, plus oracles of docs/algorithm.md §15
//! that need no Python.
use qs_attn::ops::{self, EntropyOf, LocalLayout, QsMode, Reduction};
use tch::{Kind, Tensor};

mod common;
use common::{assert_close, is_nhwc, nhwc, seeded};

const TOL: f64 = 1e-10;

fn seeded_randn(seed: i64, shape: &[i64]) -> Tensor {
    seeded(seed, || Tensor::randn(shape, (Kind::Double, tch::Device::Cpu)))
}

fn features(seed: i64, shape: &[i64]) -> Tensor {
    (seeded_randn(seed, shape) * 0.3).set_requires_grad(true)
}

fn flatten(f: &Tensor) -> Tensor {
    let s = f.size();
    f.permute([0, 2, 3, 1]).reshape([s[0], s[2] * s[3], s[1]])
}

/// The reference's entropy: p log p with −log(0) = +∞ replaced by 0.
fn entropy(p: &Tensor) -> Tensor {
    let phi = p.log().neg();
    let phi = phi.where_self(&phi.isinf().logical_not(), &phi.zeros_like());
    (p * phi).sum_dim_intlist(-1, false, Kind::Double)
}

fn grads(loss: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], inputs, false, false)
}

/// Random weights for a scalar test loss Σ w·out.
fn weighted_sum(outs: &[&Tensor]) -> Tensor {
    outs.iter()
        .enumerate()
        .map(|(i, o)| (*o * seeded_randn(99 + i as i64, &o.size()).to_device(o.device())).sum(Kind::Double))
        .fold(Tensor::from(0.0f64), |a, b| a + b)
}

/// Routed keys and queries equal the reference's, and so do the gradients of a random
/// weighting of both w.r.t. the source and target maps.
fn assert_routes_match(ours: (&Tensor, &Tensor), reference: (&Tensor, &Tensor), maps: (&Tensor, &Tensor)) {
    assert_close("keys", ours.0, reference.0, TOL);
    assert_close("queries", ours.1, reference.1, TOL);
    let g_ours = grads(&weighted_sum(&[ours.0, ours.1]), &[maps.0, maps.1]);
    let g_ref = grads(&weighted_sum(&[reference.0, reference.1]), &[maps.0, maps.1]);
    assert_close("d src", &g_ours[0], &g_ref[0], TOL);
    assert_close("d tgt", &g_ours[1], &g_ref[1], TOL);
}

#[test]
fn patch_nce_matches_composition_values_and_gradients() {
    let (b, m, d) = (3i64, 5i64, 7i64);
    let q = features(1, &[b * m, d]);
    let k = features(2, &[b * m, d]);
    let tau = 0.07;
    let reference = |q: &Tensor, k: &Tensor| {
        let (qb, kb) = (q.view([b, m, d]), k.view([b, m, d]));
        let s = qb.bmm(&kb.transpose(1, 2));
        let eye = Tensor::eye(m, (Kind::Bool, tch::Device::Cpu));
        let neg = s.masked_fill(&eye, -10.0);
        let logits = Tensor::cat(&[s.diagonal(0, 1, 2).unsqueeze(-1), neg], 2) / tau;
        (logits.logsumexp([2], false) - logits.select(2, 0)).view([b * m])
    };
    for (reduction, detach) in [(Reduction::None, true), (Reduction::Mean, false), (Reduction::None, false)] {
        let ours = ops::patch_nce_loss(&q, &k, tau, b, reduction, detach).unwrap();
        let k_used = if detach { k.detach() } else { k.shallow_clone() };
        let per_row = reference(&q, &k_used);
        let expected = if reduction == Reduction::Mean { per_row.mean(Kind::Double) } else { per_row };
        assert_close("loss", &ours, &expected, TOL);
        let g_ours = grads(&weighted_sum(&[&ours]), &[&q, &k]);
        let g_ref = grads(&weighted_sum(&[&expected]), &[&q, &k]);
        assert_close("dq", &g_ours[0], &g_ref[0], TOL);
        if detach {
            assert!(!g_ours[1].defined(), "detached keys get no gradient");
        } else {
            assert_close("dk", &g_ours[1], &g_ref[1], TOL);
        }
    }
}

#[test]
fn patch_nce_oracle_t6_orthonormal_rows() {
    // Q = K = e_0..e_{M−1}: ℓ = ln(1 + (M−1)e^{−1/τ} + e^{−11/τ}), computed in f64.
    let m = 256i64;
    let e = Tensor::eye(m, (Kind::Double, tch::Device::Cpu));
    let loss = ops::patch_nce_loss(&e, &e, 0.07, 1, Reduction::Mean, true).unwrap().double_value(&[]);
    let expected = (1.0 + (m as f64 - 1.0) * (-1.0f64 / 0.07).exp() + (-11.0f64 / 0.07).exp()).ln();
    assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
}

#[test]
fn global_selection_attention_and_routing_match_composition() {
    let (b, c, h, w, n) = (2i64, 5i64, 4i64, 5i64, 7i64);
    let src = features(3, &[b, c, h, w]);
    let tgt = features(4, &[b, c, h, w]);
    let sel = ops::qs_select(&src, n, QsMode::Global, 7, LocalLayout::Geometric, false).unwrap();
    let keys = ops::qs_route(&src, &sel).unwrap();
    let queries = ops::qs_route(&tgt, &sel).unwrap();

    let (xs, xt) = (flatten(&src), flatten(&tgt));
    let a_full = xs.bmm(&xs.transpose(1, 2)).softmax(-1, Kind::Double);
    let (_, order) = entropy(&a_full).sort_stable(true, 1, false);
    let expected_sel = order.narrow(1, 0, n);
    assert_eq!(sel.indices, expected_sel);
    let a_qs = a_full.gather(1, &expected_sel.unsqueeze(-1).expand([-1, -1, h * w], false), false);
    assert_close("attn", &sel.attn().unwrap(), &a_qs, TOL);
    assert_routes_match((&keys, &queries), (&a_qs.bmm(&xs), &a_qs.bmm(&xt)), (&src, &tgt));
}

#[test]
fn global_entropy_needs_no_full_matrix_but_equals_it() {
    // More rows than one block (2^18 elements / P = 64 rows at P = 4096): exercises blocking.
    let x = features(5, &[1, 4, 64, 64]).detach();
    let ours = ops::qs_entropy(&x, EntropyOf::Global, 7).unwrap();
    let xf = flatten(&x);
    let expected = entropy(&xf.bmm(&xf.transpose(1, 2)).softmax(-1, Kind::Double));
    assert_close("entropy", &ours, &expected, 1e-12);
}

/// Window rows of every position with plain loops: slot-major `B × P × k² × C`.
fn windows_by_loops(f: &Tensor, k: i64) -> Tensor {
    let s = f.size();
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let r = k / 2;
    let mut rows = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let mut slots = Vec::new();
            for dy in -r..=r {
                for dx in -r..=r {
                    let (yy, xx) = (y + dy, x + dx);
                    slots.push(if yy < 0 || yy >= h || xx < 0 || xx >= w {
                        Tensor::zeros([b, c], (Kind::Double, tch::Device::Cpu))
                    } else {
                        f.select(2, yy).select(2, xx)
                    });
                }
            }
            rows.push(Tensor::stack(&slots, 1));
        }
    }
    Tensor::stack(&rows, 1)
}

#[test]
fn local_geometric_matches_loops_values_and_gradients() {
    let (b, c, h, w, n, k) = (2i64, 3i64, 5i64, 6i64, 9i64, 3i64);
    let src = features(6, &[b, c, h, w]);
    let tgt = features(7, &[b, c, h, w]);
    let sel = ops::qs_select(&src, n, QsMode::Local, k, LocalLayout::Geometric, false).unwrap();
    let keys = ops::qs_route(&src, &sel).unwrap();
    let queries = ops::qs_route(&tgt, &sel).unwrap();

    let (nb_s, nb_t, xs) = (windows_by_loops(&src, k), windows_by_loops(&tgt, k), flatten(&src));
    let a_all = nb_s.matmul(&xs.unsqueeze(-1)).squeeze_dim(-1).softmax(-1, Kind::Double);
    let (_, order) = entropy(&a_all).sort_stable(true, 1, false);
    let expected_sel = order.narrow(1, 0, n);
    assert_eq!(sel.indices, expected_sel);
    // Rows `expected_sel` of a `B × P × …` tensor.
    let pick = |t: &Tensor| {
        let flat = t.reshape([b, h * w, -1]);
        let idx = expected_sel.unsqueeze(-1).expand([b, n, flat.size()[2]], false);
        let mut shape = vec![b, n];
        shape.extend(&t.size()[2..]);
        flat.gather(1, &idx, false).reshape(shape.as_slice())
    };
    let a_qs = pick(&a_all);
    assert_close("attn", &sel.attn().unwrap(), &a_qs, TOL);
    let k_ref = a_qs.unsqueeze(-2).matmul(&pick(&nb_s)).squeeze_dim(-2);
    let q_ref = a_qs.unsqueeze(-2).matmul(&pick(&nb_t)).squeeze_dim(-2);
    assert_routes_match((&keys, &queries), (&k_ref, &q_ref), (&src, &tgt));
}

#[test]
fn local_entropy_oracle_t8_corners_lowest() {
    // Constant map, C = 1, 8×8, k = 7: the four corners (16 in-bound slots) tie for lowest,
    // with H(16) = ln Z − 16e/Z, Z = 16e + 33.
    let f = Tensor::ones([1, 1, 8, 8], (Kind::Float, tch::Device::Cpu));
    for layout in [LocalLayout::Geometric, LocalLayout::Reference] {
        let ent = ops::qs_entropy(&f, EntropyOf::Local(layout), 7).unwrap();
        let e = std::f64::consts::E;
        let z = 16.0 * e + 33.0;
        let h16 = z.ln() - 16.0 * e / z;
        for corner in [0i64, 7, 56, 63] {
            assert!((ent.double_value(&[0, corner]) - h16).abs() < 1e-5);
        }
        let sel = ops::qs_select(&f, 4, QsMode::Local, 7, layout, false).unwrap();
        let mut picked = Vec::<i64>::try_from(&sel.indices.flatten(0, -1)).unwrap();
        picked.sort();
        assert_eq!(picked, vec![0, 7, 56, 63]);
    }
}

#[test]
fn cross_route_equals_global_when_translation_is_source() {
    let src = features(8, &[2, 4, 4, 4]);
    let sel = ops::qs_select(&src, 5, QsMode::Cross, 7, LocalLayout::Geometric, false).unwrap();
    let cross = ops::qs_cross_route(&src, &sel).unwrap();
    let global = ops::qs_route(&src, &sel).unwrap();
    assert_close("cross == global", &cross, &global, TOL);
}

#[test]
fn routing_gradients_keep_the_maps_layout() {
    // The fast path's maps are channels-last: the selection, routed rows and both maps'
    // gradients equal those of NCHW maps, and each map's gradient comes back in its own
    // layout (no layout copy where the gradient meets the rest of the network).
    let (src0, tgt0) = (features(13, &[2, 6, 5, 4]).detach(), features(14, &[2, 6, 5, 4]).detach());
    for mode in [QsMode::Global, QsMode::LocalGlobal, QsMode::Cross, QsMode::Local] {
        let run = |channels_last: bool| {
            let layout = |m: &Tensor| if channels_last { nhwc(m) } else { m.copy() }.set_requires_grad(true);
            let (src, tgt) = (layout(&src0), layout(&tgt0));
            let sel = ops::qs_select(&src, 7, mode, 3, LocalLayout::Geometric, false).unwrap();
            let keys = ops::qs_route(&src, &sel).unwrap();
            let queries = if mode == QsMode::Cross {
                ops::qs_cross_route(&tgt, &sel).unwrap()
            } else {
                ops::qs_route(&tgt, &sel).unwrap()
            };
            let mut outs = vec![keys, queries];
            outs.push(sel.attn().unwrap()); // the selected attention rows, a differentiable value of their own
            let g = grads(&weighted_sum(&outs.iter().collect::<Vec<_>>()), &[&src, &tgt]);
            (sel.indices.shallow_clone(), outs, g)
        };
        let ((ids_nchw, outs_nchw, g_nchw), (ids_nhwc, outs_nhwc, g_nhwc)) = (run(false), run(true));
        assert_eq!(ids_nchw, ids_nhwc, "{mode:?}: the same selection");
        for (a, b) in outs_nhwc.iter().zip(&outs_nchw) {
            assert_close(&format!("{mode:?}: routed rows"), a, b, TOL);
        }
        for (map, (a, b)) in ["source", "target"].iter().zip(g_nhwc.iter().zip(&g_nchw)) {
            assert_close(&format!("{mode:?}: {map} map gradient"), a, b, TOL);
            assert!(b.is_contiguous(), "{mode:?}: NCHW gradient for the NCHW {map} map, strides {:?}", b.stride());
            assert!(
                is_nhwc(a),
                "{mode:?}: channels-last gradient for the channels-last {map} map, strides {:?}",
                a.stride()
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let f = features(9, &[1, 3, 4, 4]).detach();
    let msg = |r: Result<ops::Selection, tch::TchError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg(ops::qs_select(&f, 17, QsMode::Global, 7, LocalLayout::Geometric, false)).contains("num_patches"));
    assert!(msg(ops::qs_select(&f, 4, QsMode::Local, 4, LocalLayout::Geometric, false)).contains("odd"));
    assert!(
        msg(ops::qs_select(&f.view([3, 4, 4]), 4, QsMode::Global, 7, LocalLayout::Geometric, false)).contains("4-D")
    );
    let ints = f.to_kind(Kind::Int64);
    assert!(msg(ops::qs_select(&ints, 4, QsMode::Global, 7, LocalLayout::Geometric, false)).contains("floating"));
    let q = Tensor::zeros([8, 4], (Kind::Float, tch::Device::Cpu));
    let e = ops::patch_nce_loss(&q, &q, 0.07, 3, Reduction::Mean, true).unwrap_err().to_string();
    assert!(e.contains("cannot be split into 3 images"), "{e}");
    let sel = ops::qs_select(&f, 4, QsMode::Global, 7, LocalLayout::Geometric, false).unwrap();
    let other = features(10, &[1, 3, 5, 4]).detach();
    assert!(ops::qs_route(&other, &sel).unwrap_err().to_string().contains("selection was made"));
}

#[test]
fn cuda_results_match_cpu_when_available() {
    if !tch::Cuda::is_available() {
        return;
    }
    let dev = tch::Device::Cuda(0);
    let src = features(11, &[2, 6, 8, 8]);
    let tgt = features(12, &[2, 6, 8, 8]);
    let run = |s: &Tensor, t: &Tensor, mode: QsMode| {
        let sel = ops::qs_select(s, 16, mode, 3, LocalLayout::Reference, false).unwrap();
        let k = ops::qs_route(s, &sel).unwrap();
        let q =
            if mode == QsMode::Cross { ops::qs_cross_route(t, &sel).unwrap() } else { ops::qs_route(t, &sel).unwrap() };
        let loss = ops::patch_nce_loss(&q.flatten(0, 1), &k.flatten(0, 1), 0.07, 2, Reduction::Mean, true).unwrap();
        let g = grads(&loss, &[s, t]);
        (sel.indices.to_device(tch::Device::Cpu), loss.to_device(tch::Device::Cpu), g)
    };
    for mode in [QsMode::Global, QsMode::Local, QsMode::LocalGlobal, QsMode::Cross] {
        let (idx_cpu, loss_cpu, g_cpu) = run(&src, &tgt, mode);
        let (s, t) =
            (src.detach().to_device(dev).set_requires_grad(true), tgt.detach().to_device(dev).set_requires_grad(true));
        let (idx_gpu, loss_gpu, g_gpu) = run(&s, &t, mode);
        assert_eq!(idx_cpu, idx_gpu, "{mode:?}");
        assert_close("loss", &loss_gpu, &loss_cpu, 1e-9);
        for (a, b) in g_gpu.iter().zip(&g_cpu) {
            assert_close("grad", &a.to_device(tch::Device::Cpu), b, 1e-9);
        }
    }
}
