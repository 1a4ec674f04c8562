//! The networks against docs/algorithm.md §3, §4, §7: parameter counts and shapes (T1), the
//! reference's state-dict key names, the resampling oracle (T2), initialisation statistics (T13),
//! layer behaviour against direct tch computations, and the projector's sampling contract.
use std::collections::BTreeSet;

use qs_attn::nets::projector::StackedTerms;
use qs_attn::nets::{
    init_weights, Discriminator, DiscriminatorConfig, Down, Generator, GeneratorConfig, InitType, Projector,
    ProjectorConfig, SlotSample, Up,
};
use qs_attn::ops::{self, LocalLayout, PatchSampler, QsMode};
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::{assert_close, is_nhwc, max_abs_diff, nhwc, seeded};

// ---------------------------------------------------------------------------------------------
// helpers

fn randn(seed: i64, shape: &[i64]) -> Tensor {
    seeded(seed, || Tensor::randn(shape, (Kind::Float, Device::Cpu)))
}

/// Images in [−1, 1].
fn images(seed: i64, shape: &[i64]) -> Tensor {
    seeded(seed, || Tensor::rand(shape, (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
}

fn trainable_params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

fn names(vs: &nn::VarStore) -> BTreeSet<String> {
    vs.variables().into_keys().collect()
}

fn var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables().remove(name).unwrap_or_else(|| panic!("no variable {name}"))
}

/// `model.{i}.weight` and `model.{i}.bias` for each conv index.
fn conv_keys(prefix: &str, idx: &[usize]) -> Vec<String> {
    idx.iter().flat_map(|i| [format!("{prefix}.{i}.weight"), format!("{prefix}.{i}.bias")]).collect()
}

fn filt_keys(idx: &[usize]) -> Vec<String> {
    idx.iter().map(|i| format!("model.{i}.filt")).collect()
}

/// `model.{i}.conv_block.{1,5}.weight|bias` for each ResBlock index.
fn block_keys(idx: std::ops::RangeInclusive<usize>) -> Vec<String> {
    idx.flat_map(|i| {
        [1, 5]
            .into_iter()
            .flat_map(move |j| [format!("model.{i}.conv_block.{j}.weight"), format!("model.{i}.conv_block.{j}.bias")])
    })
    .collect()
}

fn key_set(groups: &[Vec<String>]) -> BTreeSet<String> {
    groups.iter().flatten().cloned().collect()
}

// Building a network draws its default weights from torch's RNG: under the lock.
fn generator(cfg: &GeneratorConfig) -> (nn::VarStore, Generator) {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = seeded(100, || Generator::new(&vs.root(), cfg));
    (vs, g)
}

fn discriminator(cfg: &DiscriminatorConfig) -> (nn::VarStore, Discriminator) {
    let vs = nn::VarStore::new(Device::Cpu);
    let d = seeded(101, || Discriminator::new(&vs.root(), cfg));
    (vs, d)
}

fn small_generator(no_antialias: bool, no_antialias_up: bool) -> GeneratorConfig {
    GeneratorConfig { ngf: 8, n_blocks: 2, no_antialias, no_antialias_up, ..Default::default() }
}

/// Reflection padding by `n` written out with indices: padded index `i` reads
/// `|i − n|` mirrored at both ends (the edge is not repeated).
fn reflect_pad_by_index(x: &Tensor, n: i64) -> Tensor {
    let reflect = |len: i64| -> Tensor {
        let idx: Vec<i64> = (-n..len + n)
            .map(|i| {
                if i < 0 {
                    -i
                } else if i >= len {
                    2 * (len - 1) - i
                } else {
                    i
                }
            })
            .collect();
        Tensor::from_slice(&idx)
    };
    let (h, w) = (x.size()[2], x.size()[3]);
    x.index_select(2, &reflect(h)).index_select(3, &reflect(w))
}

/// Instance norm written out: per (b, c), `(x − mean) / sqrt(biased var + 1e-5)` over H·W.
fn instance_norm_by_hand(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Double);
    let mean = x.mean_dim([2, 3].as_slice(), true, Kind::Double);
    let var = (&x - &mean).square().mean_dim([2, 3].as_slice(), true, Kind::Double);
    (x - mean) / (var + 1e-5).sqrt()
}

fn conv_by_vars(vs: &nn::VarStore, prefix: &str, x: &Tensor, padding: i64) -> Tensor {
    let (w, b) = (var(vs, &format!("{prefix}.weight")), var(vs, &format!("{prefix}.bias")));
    x.conv2d(&w, Some(&b), [1, 1], [padding, padding], [1, 1], 1)
}

fn sample_std(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).std(true).double_value(&[])
}

// ---------------------------------------------------------------------------------------------
// T1: parameter counts and state-dict names

#[test]
fn parameter_counts_match_t1() {
    let (g_vs, g) = generator(&GeneratorConfig::default());
    assert_eq!(trainable_params(&g_vs), 11_378_179);
    assert_eq!(g.num_layers(), 32);

    let (d_vs, _) = discriminator(&DiscriminatorConfig::default());
    assert_eq!(trainable_params(&d_vs), 2_764_737);

    let f_vs = nn::VarStore::new(Device::Cpu);
    let cfg = projector_config(256, Some(QsMode::Global), vec![3, 4]);
    seeded(102, || Projector::new(&f_vs.root(), &[3, 128, 256, 256, 256], &cfg));
    assert_eq!(trainable_params(&f_vs), 560_384);
}

#[test]
fn generator_keys_are_the_reference_state_dict() {
    let (vs, _) = generator(&GeneratorConfig::default());
    let expected =
        key_set(&[conv_keys("model", &[1, 4, 8, 22, 26, 30]), filt_keys(&[7, 11, 21, 25]), block_keys(12..=20)]);
    assert_eq!(names(&vs), expected);

    // Shapes of a few keys, and the filters are buffers, not parameters.
    let shape = |k: &str| var(&vs, k).size();
    assert_eq!(shape("model.1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape("model.4.weight"), [128, 64, 3, 3]);
    assert_eq!(shape("model.8.weight"), [256, 128, 3, 3]);
    assert_eq!(shape("model.12.conv_block.1.weight"), [256, 256, 3, 3]);
    assert_eq!(shape("model.22.weight"), [128, 256, 3, 3]);
    assert_eq!(shape("model.26.weight"), [64, 128, 3, 3]);
    assert_eq!(shape("model.30.weight"), [3, 64, 7, 7]);
    assert_eq!(shape("model.30.bias"), [3]);
    assert_eq!(shape("model.7.filt"), [128, 1, 3, 3]);
    assert_eq!(shape("model.11.filt"), [256, 1, 3, 3]);
    assert_eq!(shape("model.21.filt"), [256, 1, 4, 4]);
    assert_eq!(shape("model.25.filt"), [128, 1, 4, 4]);
    assert_eq!(vs.trainable_variables().len(), expected.len() - 4);
}

#[test]
fn generator_variants_shift_the_indices_as_the_reference() {
    // no_antialias: "conv s1, IN, ReLU, Down" → "conv s2, IN, ReLU" (one element less, twice).
    let (vs, g) = generator(&GeneratorConfig { no_antialias: true, ..Default::default() });
    assert_eq!(g.num_layers(), 30);
    let expected = key_set(&[conv_keys("model", &[1, 4, 7, 20, 24, 28]), filt_keys(&[19, 23]), block_keys(10..=18)]);
    assert_eq!(names(&vs), expected);
    assert_eq!(trainable_params(&vs), 11_378_179);

    // no_antialias_up: "Up, conv, IN, ReLU" → "conv_transpose, IN, ReLU".
    let (vs, g) = generator(&GeneratorConfig { no_antialias_up: true, ..Default::default() });
    assert_eq!(g.num_layers(), 30);
    let expected = key_set(&[conv_keys("model", &[1, 4, 8, 21, 24, 28]), filt_keys(&[7, 11]), block_keys(12..=20)]);
    assert_eq!(names(&vs), expected);
    assert_eq!(var(&vs, "model.21.weight").size(), [256, 128, 3, 3]); // ConvTranspose2d: in × out × k × k
    assert_eq!(var(&vs, "model.24.weight").size(), [128, 64, 3, 3]);
    assert_eq!(trainable_params(&vs), 11_378_179);

    let (vs, g) = generator(&GeneratorConfig { no_antialias: true, no_antialias_up: true, ..Default::default() });
    assert_eq!(g.num_layers(), 28);
    let expected = key_set(&[conv_keys("model", &[1, 4, 7, 19, 22, 26]), block_keys(10..=18)]);
    assert_eq!(names(&vs), expected);
}

#[test]
fn generator_variants_keep_the_resolution() {
    let x = images(3, &[2, 3, 32, 32]);
    for (down, up) in [(false, false), (true, false), (false, true), (true, true)] {
        let (_vs, g) = generator(&small_generator(down, up));
        let y = tch::no_grad(|| g.forward(&x));
        assert_eq!(y.size(), [2, 3, 32, 32], "no_antialias={down} no_antialias_up={up}");
        assert!(y.abs().max().double_value(&[]) <= 1.0);
        // Encoder taps after the two downsamplings are at a quarter of the resolution.
        let first_block = 2 + if down { 8 } else { 10 };
        let taps = g.encode(&x, &[first_block]).unwrap();
        assert_eq!(taps[0].size(), [2, 32, 8, 8], "no_antialias={down}");
    }
}

#[test]
fn discriminator_keys_and_variants() {
    let (vs, _) = discriminator(&DiscriminatorConfig::default());
    let expected = key_set(&[conv_keys("model", &[0, 3, 7, 11, 14]), filt_keys(&[2, 6, 10])]);
    assert_eq!(names(&vs), expected);
    assert_eq!(var(&vs, "model.0.weight").size(), [64, 3, 4, 4]);
    assert_eq!(var(&vs, "model.11.weight").size(), [512, 256, 4, 4]);
    assert_eq!(var(&vs, "model.14.weight").size(), [1, 512, 4, 4]);
    assert_eq!(var(&vs, "model.2.filt").size(), [64, 1, 3, 3]);
    assert_eq!(var(&vs, "model.10.filt").size(), [256, 1, 3, 3]);

    // no_antialias: the pix2pix PatchGAN layout.
    let (vs, d) = discriminator(&DiscriminatorConfig { no_antialias: true, ..Default::default() });
    assert_eq!(names(&vs), key_set(&[conv_keys("model", &[0, 2, 5, 8, 11])]));
    assert_eq!(trainable_params(&vs), 2_764_737);
    let y = tch::no_grad(|| d.forward(&images(4, &[2, 3, 64, 64])));
    assert_eq!(y.size(), [2, 1, 6, 6]);

    let (_, d) = discriminator(&DiscriminatorConfig::default());
    let y = tch::no_grad(|| d.forward(&images(4, &[2, 3, 64, 64])));
    assert_eq!(y.size(), [2, 1, 6, 6]);
    assert!(d.f_forward(&images(4, &[2, 1, 64, 64])).is_err(), "wrong channel count");
    assert!(d.f_forward(&images(4, &[3, 64, 64])).is_err(), "missing batch axis");
}

/// Leaky ReLU written out: `x` where positive, `slope·x` elsewhere.
fn leaky_by_hand(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * slope))
}

/// Blur-pool written out: reflection pad 1, depthwise 3×3 `[1,2,1]ᵀ[1,2,1]/16`, stride 2.
fn down_by_hand(x: &Tensor) -> Tensor {
    let c = x.size()[1];
    let b = Tensor::from_slice(&[1.0f32, 2.0, 1.0]);
    let k = (b.outer(&b) / 16.0).view([1, 1, 3, 3]).expand([c, 1, 3, 3], false);
    reflect_pad_by_index(x, 1).conv2d(&k, None::<Tensor>, [2, 2], [0, 0], [1, 1], c)
}

#[test]
fn discriminator_matches_a_direct_composition() {
    let (vs, d) = discriminator(&DiscriminatorConfig { ndf: 4, ..Default::default() });
    let x = images(8, &[2, 3, 32, 32]);
    let conv = |prefix: &str, h: &Tensor| conv_by_vars(&vs, prefix, h, 1);
    let norm = |h: &Tensor| instance_norm_by_hand(h).to_kind(Kind::Float);
    let h = down_by_hand(&leaky_by_hand(&conv("model.0", &x), 0.2));
    let h = down_by_hand(&leaky_by_hand(&norm(&conv("model.3", &h)), 0.2));
    let h = down_by_hand(&leaky_by_hand(&norm(&conv("model.7", &h)), 0.2));
    let h = leaky_by_hand(&norm(&conv("model.11", &h)), 0.2);
    let expected = conv("model.14", &h);
    let y = tch::no_grad(|| d.forward(&x));
    assert_eq!(y.size(), [2, 1, 2, 2]);
    assert_close("discriminator", &y, &expected, 1e-4);
}

#[test]
fn gradients_reach_every_weight_but_not_the_filters() {
    let (vs, g) = generator(&small_generator(false, false));
    let (dvs, d) = discriminator(&DiscriminatorConfig { ndf: 4, ..Default::default() });
    let x = images(9, &[2, 3, 32, 32]);
    let loss = d.forward(&g.forward(&x)).square().mean(Kind::Float);
    loss.backward();
    for store in [&vs, &dvs] {
        for (name, t) in store.variables() {
            if name.ends_with(".filt") {
                assert!(!t.requires_grad(), "{name} must not be trainable");
            } else {
                let grad = t.grad();
                assert!(
                    grad.defined() && grad.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                    "{name} has no gradient"
                );
            }
        }
    }
}

#[test]
fn projector_keys_are_built_eagerly() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = projector_config(256, Some(QsMode::Global), vec![3, 4]);
    seeded(102, || Projector::new(&vs.root(), &[3, 128, 256, 256, 256], &cfg));
    let expected: BTreeSet<String> = (0..5)
        .flat_map(|s| {
            [0, 2].into_iter().flat_map(move |j| [format!("mlp_{s}.{j}.weight"), format!("mlp_{s}.{j}.bias")])
        })
        .collect();
    assert_eq!(names(&vs), expected);
    assert_eq!(var(&vs, "mlp_0.0.weight").size(), [256, 3]);
    assert_eq!(var(&vs, "mlp_1.0.weight").size(), [256, 128]);
    assert_eq!(var(&vs, "mlp_4.2.weight").size(), [256, 256]);

    let vs = nn::VarStore::new(Device::Cpu);
    seeded(102, || Projector::new(&vs.root(), &[3, 128], &ProjectorConfig { use_mlp: false, ..cfg }));
    assert!(vs.variables().is_empty());
}

// ---------------------------------------------------------------------------------------------
// T1: shapes at 256² (one generator pass, encode up to the output)

#[test]
fn shapes_at_256_match_t1() {
    let (_gvs, g) = generator(&GeneratorConfig::default());
    let (_dvs, d) = discriminator(&DiscriminatorConfig::default());
    let x = images(1, &[1, 3, 256, 256]);
    let out = tch::no_grad(|| g.encode(&x, &[0, 4, 8, 12, 16, 31])).unwrap();
    let shapes: Vec<Vec<i64>> = out.iter().map(|t| t.size()).collect();
    assert_eq!(
        shapes,
        [
            vec![1, 3, 262, 262],
            vec![1, 128, 256, 256],
            vec![1, 256, 128, 128],
            vec![1, 256, 64, 64],
            vec![1, 256, 64, 64],
            vec![1, 3, 256, 256],
        ]
    );
    let y = tch::no_grad(|| d.forward(&out[5]));
    assert_eq!(y.size(), [1, 1, 30, 30]);
}

// ---------------------------------------------------------------------------------------------
// encode and the layers against direct computations (64²)

#[test]
fn encode_returns_the_forward_intermediates() {
    let (vs, g) = generator(&GeneratorConfig::default());
    let x = images(2, &[1, 3, 64, 64]);
    tch::no_grad(|| {
        let all_idx: Vec<usize> = (0..g.num_layers()).collect();
        let all = g.encode(&x, &all_idx).unwrap();
        assert_eq!(all.len(), 32);
        assert_close("forward = last element", &g.forward(&x), &all[31], 0.0);

        // Any order, repeats, each equal to the element's output in the full pass.
        let picked = g.encode(&x, &[16, 4, 0, 4]).unwrap();
        for (t, i) in picked.iter().zip([16, 4, 0, 4]) {
            assert_close(&format!("tap {i}"), t, &all[i], 0.0);
        }
        assert!(g.encode(&x, &[]).unwrap().is_empty());

        // idx 0: reflection pad 3, written out with indices.
        assert_close("reflection pad 3", &all[0], &reflect_pad_by_index(&x, 3), 0.0);
        // idx 1: conv 3→64 k7 without padding, with the stored weights.
        assert_close("conv 1", &all[1], &conv_by_vars(&vs, "model.1", &all[0], 0), 1e-5);
        // idx 2: instance norm (no affine, biased variance, eps 1e-5); idx 3: ReLU.
        assert_close("instance norm", &all[2], &instance_norm_by_hand(&all[1]), 1e-4);
        assert_close("relu", &all[3], &all[2].relu(), 0.0);
        // idx 4: conv 64→128 k3 zero pad 1 (the pre-norm tap).
        assert_close("conv 4", &all[4], &conv_by_vars(&vs, "model.4", &all[3], 1), 1e-4);
        // idx 12: ResBlock, out = in + [pad, conv, IN, ReLU, pad, conv, IN](in), no activation.
        let h = conv_by_vars(&vs, "model.12.conv_block.1", &reflect_pad_by_index(&all[11], 1), 0);
        let h = instance_norm_by_hand(&h).to_kind(Kind::Float).relu();
        let h = conv_by_vars(&vs, "model.12.conv_block.5", &reflect_pad_by_index(&h, 1), 0);
        let expected = instance_norm_by_hand(&h) + all[11].to_kind(Kind::Double);
        assert_close("resblock", &all[12], &expected, 1e-4);
        assert!(all[12].min().double_value(&[]) < 0.0, "no ReLU after the residual sum");
        // idx 31: tanh of idx 30.
        assert_close("tanh", &all[31], &all[30].tanh(), 0.0);
    });
}

#[test]
fn encode_stops_after_the_largest_index() {
    // On a 4×4 image the map after idx 11 is 1×1 and the first ResBlock's reflection pad (idx 12)
    // fails: taps up to 11 succeed only if the sequence is not run any further.
    let (_vs, g) = generator(&GeneratorConfig::default());
    let x = images(5, &[1, 3, 4, 4]);
    let taps = tch::no_grad(|| g.encode(&x, &[0, 4, 8, 11])).unwrap();
    assert_eq!(taps[3].size(), [1, 256, 1, 1]);
    assert!(tch::no_grad(|| g.encode(&x, &[12])).is_err());
    assert!(g.f_forward(&x).is_err());
}

#[test]
fn generator_rejects_bad_input() {
    let (_vs, g) = generator(&small_generator(false, false));
    let x = images(6, &[1, 3, 16, 16]);
    assert!(g.encode(&x, &[g.num_layers()]).is_err(), "index past the end");
    assert!(g.encode(&images(6, &[1, 1, 16, 16]), &[0]).is_err(), "wrong channel count");
    assert!(g.encode(&images(6, &[3, 16, 16]), &[0]).is_err(), "missing batch axis");
    assert!(g.f_forward(&images(6, &[1, 4, 16, 16])).is_err());
}

// ---------------------------------------------------------------------------------------------
// T2: resampling

#[test]
fn resampling_matches_t2() {
    let vs = nn::VarStore::new(Device::Cpu);
    let down = Down::new(&(vs.root() / "down"), 1);
    let up = Up::new(&(vs.root() / "up"), 1);

    let x = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([1, 1, 4, 4]);
    let expected = Tensor::from_slice(&[2.5f32, 4.0, 8.5, 10.0]).view([1, 1, 2, 2]);
    assert_close("Down(1)", &down.forward(&x), &expected, 1e-6);

    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 1, 2, 2]);
    let expected = Tensor::from_slice(&[
        1.0f32, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
    ])
    .view([1, 1, 4, 4]);
    assert_close("Up(1)", &up.forward(&x), &expected, 1e-6);

    // The filters: non-trainable variables `filt`.
    let up_kernel = Tensor::from_slice(&[1.0f32, 3., 3., 1., 3., 9., 9., 3., 3., 9., 9., 3., 1., 3., 3., 1.]) / 16.0;
    assert_close("Up kernel", &var(&vs, "up.filt").view([16]), &up_kernel, 1e-7);
    let down_kernel = Tensor::from_slice(&[1.0f32, 2., 1., 2., 4., 2., 1., 2., 1.]) / 16.0;
    assert_close("Down kernel", &var(&vs, "down.filt").view([9]), &down_kernel, 1e-7);
    assert!(vs.trainable_variables().is_empty());
    assert_eq!(names(&vs), key_set(&[vec!["down.filt".into(), "up.filt".into()]]));
}

#[test]
fn resampling_is_depthwise_with_the_documented_sizes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let (down1, down3) = (Down::new(&(vs.root() / "d1"), 1), Down::new(&(vs.root() / "d3"), 3));
    let (up1, up3) = (Up::new(&(vs.root() / "u1"), 1), Up::new(&(vs.root() / "u3"), 3));
    let x = randn(7, &[2, 3, 5, 7]);
    let (d, u) = (down3.forward(&x), up3.forward(&x));
    assert_eq!(d.size(), [2, 3, 3, 4]); // ⌊(n−1)/2⌋ + 1
    assert_eq!(u.size(), [2, 3, 10, 14]); // 2n
    for c in 0..3 {
        let xc = x.narrow(1, c, 1);
        assert_close("Down per channel", &d.narrow(1, c, 1), &down1.forward(&xc), 1e-6);
        assert_close("Up per channel", &u.narrow(1, c, 1), &up1.forward(&xc), 1e-6);
    }
    // A constant map stays constant (the kernels are normalised; Up's replication pad).
    let ones = Tensor::ones([1, 3, 6, 6], (Kind::Float, Device::Cpu));
    assert_close("Down const", &down3.forward(&ones), &Tensor::ones([1, 3, 3, 3], (Kind::Float, Device::Cpu)), 1e-6);
    assert_close("Up const", &up3.forward(&ones), &Tensor::ones([1, 3, 12, 12], (Kind::Float, Device::Cpu)), 1e-6);
    assert!(down3.f_forward(&randn(7, &[1, 2, 6, 6])).is_err(), "channel count differs from the filter");
    assert!(up3.f_forward(&randn(7, &[1, 2, 6, 6])).is_err());
}

// ---------------------------------------------------------------------------------------------
// T13: initialisation

#[test]
fn xavier_init_matches_t13() {
    let (vs, _) = generator(&GeneratorConfig::default());
    let filters: Vec<(String, Tensor)> =
        names(&vs).into_iter().filter(|k| k.ends_with(".filt")).map(|k| (k.clone(), var(&vs, &k).copy())).collect();
    seeded(0, || init_weights(&vs, InitType::Xavier, 0.02)).unwrap();

    let expected_std = 0.02 * (2.0f64 / (3.0 * 49.0 + 64.0 * 49.0)).sqrt();
    assert!((expected_std - 4.936e-4).abs() < 1e-7);
    let w = var(&vs, "model.1.weight");
    let std = sample_std(&w);
    assert!((std / expected_std - 1.0).abs() < 0.03, "model.1.weight std {std:e} vs {expected_std:e}");
    assert!(w.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]).abs() < 0.05 * expected_std);

    let w = var(&vs, "model.12.conv_block.1.weight");
    let expected_std = 0.02 * (2.0f64 / (2.0 * 256.0 * 9.0)).sqrt();
    assert!((sample_std(&w) / expected_std - 1.0).abs() < 0.01);

    for name in names(&vs).iter().filter(|k| k.ends_with(".bias")) {
        assert_eq!(var(&vs, name).abs().max().double_value(&[]), 0.0, "{name} is not zero");
    }
    for (name, before) in &filters {
        assert_close(name, &var(&vs, name), before, 0.0);
    }
}

#[test]
fn other_init_types_have_their_statistics() {
    let cfg = GeneratorConfig { no_antialias_up: true, ..Default::default() };
    let (vs, _) = generator(&cfg);

    // normal: N(0, gain²).
    seeded(1, || init_weights(&vs, InitType::Normal, 0.02)).unwrap();
    let std = sample_std(&var(&vs, "model.12.conv_block.1.weight"));
    assert!((std / 0.02 - 1.0).abs() < 0.01, "normal std {std}");

    // kaiming: N(0, 2/fan_in), fan_in = size(1)·k·k (also for the transposed conv, whose weight
    // is in × out × k × k: fan_in = 128·9 there, as PyTorch computes it).
    seeded(2, || init_weights(&vs, InitType::Kaiming, 0.02)).unwrap();
    let std = sample_std(&var(&vs, "model.12.conv_block.1.weight"));
    assert!((std / (2.0f64 / (256.0 * 9.0)).sqrt() - 1.0).abs() < 0.01, "kaiming std {std}");
    let std = sample_std(&var(&vs, "model.21.weight"));
    assert!((std / (2.0f64 / (128.0 * 9.0)).sqrt() - 1.0).abs() < 0.01, "kaiming (transposed) std {std}");

    // orthogonal: the weight as a rows × rest matrix is gain × (orthonormal rows).
    seeded(3, || init_weights(&vs, InitType::Orthogonal, 0.02)).unwrap();
    let w = var(&vs, "model.12.conv_block.1.weight").to_kind(Kind::Double).view([256, 256 * 9]);
    let gram = w.matmul(&w.tr());
    assert_close("orthogonal rows", &gram, &(Tensor::eye(256, (Kind::Double, Device::Cpu)) * 4e-4), 1e-8);
}

#[test]
fn init_of_linear_weights() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = projector_config(512, None, vec![]);
    seeded(102, || Projector::new(&vs.root(), &[3, 256], &cfg));

    seeded(4, || init_weights(&vs, InitType::Xavier, 0.02)).unwrap();
    let expected = 0.02 * (2.0f64 / (256.0 + 512.0)).sqrt();
    assert!((sample_std(&var(&vs, "mlp_1.0.weight")) / expected - 1.0).abs() < 0.02);
    assert_eq!(var(&vs, "mlp_1.0.bias").abs().max().double_value(&[]), 0.0);

    // Tall matrix (512 × 3): orthonormal columns times the gain.
    seeded(5, || init_weights(&vs, InitType::Orthogonal, 0.5)).unwrap();
    let w = var(&vs, "mlp_0.0.weight").to_kind(Kind::Double);
    assert_close("orthogonal columns", &w.tr().matmul(&w), &(Tensor::eye(3, (Kind::Double, Device::Cpu)) * 0.25), 1e-6);

    assert!("glorot".parse::<InitType>().is_err());
    assert_eq!("orthogonal".parse::<InitType>().unwrap(), InitType::Orthogonal);
    assert!(init_weights(&vs, InitType::Normal, f64::NAN).is_err());
}

#[test]
fn init_is_reproducible_for_a_seed() {
    // Two VarStores (different HashMap orders) draw the same values for the same seed.
    let draw = || {
        seeded(11, || {
            let vs = nn::VarStore::new(Device::Cpu);
            Discriminator::new(&vs.root(), &DiscriminatorConfig::default());
            init_weights(&vs, InitType::Xavier, 0.02).unwrap();
            vs
        })
    };
    let (a, b) = (draw(), draw());
    for name in names(&a) {
        assert_close(&name, &var(&a, &name), &var(&b, &name), 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// projector

fn projector_config(nc: i64, mode: Option<QsMode>, qs_slots: Vec<usize>) -> ProjectorConfig {
    ProjectorConfig {
        nc,
        use_mlp: true,
        mode,
        qs_slots,
        window: 7,
        layout: LocalLayout::Geometric,
        per_image_ids: false,
        detach_attn: false,
    }
}

const CHANNELS: [i64; 3] = [3, 8, 8];

/// Three maps of a batch of 2: 3×10×10 (slot 0), 8×8×8, 8×6×6 (QS slot 2).
fn maps(seed: i64) -> Vec<Tensor> {
    vec![randn(seed, &[2, 3, 10, 10]), randn(seed + 1, &[2, 8, 8, 8]), randn(seed + 2, &[2, 8, 6, 6]) * 0.5]
}

fn projector(cfg: &ProjectorConfig) -> (nn::VarStore, Projector) {
    let vs = nn::VarStore::new(Device::Cpu);
    let f = seeded(21, || Projector::new(&vs.root(), &CHANNELS, cfg));
    (vs, f)
}

/// The slot's MLP and L2 normalisation written out with the stored weights.
fn project_by_hand(vs: &nn::VarStore, slot: usize, rows: &Tensor) -> Tensor {
    let p = |k: &str| var(vs, &format!("mlp_{slot}.{k}"));
    let h = (rows.matmul(&p("0.weight").tr()) + p("0.bias")).relu();
    let v = h.matmul(&p("2.weight").tr()) + p("2.bias");
    l2(&v)
}

fn l2(v: &Tensor) -> Tensor {
    v / (v.square().sum_dim_intlist(-1, true, Kind::Float).sqrt() + 1e-7)
}

/// `(B·N) × C` rows at shared `(N,)` or per-image `(B, N)` raster ids, image-major.
fn rows_by_hand(feat: &Tensor, ids: &Tensor) -> Tensor {
    let (b, c, h, w) = feat.size4().unwrap();
    let x = feat.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
    let per_image: Vec<Tensor> = (0..b)
        .map(|i| {
            let id = if ids.dim() == 1 { ids.shallow_clone() } else { ids.get(i) };
            x.get(i).index_select(0, &id)
        })
        .collect();
    Tensor::cat(&per_image, 0)
}

fn random_ids(sample: &SlotSample) -> &Tensor {
    match sample {
        SlotSample::Random { ids, .. } => ids,
        SlotSample::Qs(_) => panic!("expected a random slot"),
    }
}

fn selection(sample: &SlotSample) -> &ops::Selection {
    match sample {
        SlotSample::Qs(sel) => sel,
        SlotSample::Random { .. } => panic!("expected a QS slot"),
    }
}

#[test]
fn projector_source_and_target_calls() {
    let cfg = projector_config(16, Some(QsMode::Global), vec![2]);
    let (vs, f) = projector(&cfg);
    let (src, tgt) = (maps(30), maps(40));
    let n = 12;
    let mut sampler = PatchSampler::new(7);
    let (keys, samples) = f.sample_source(&src, n, &mut sampler, None).unwrap();
    let queries = f.sample_target(&tgt, &samples).unwrap();

    for (s, rows) in keys.iter().chain(&queries).enumerate() {
        assert_eq!(rows.size(), [2 * n, 16], "slot {}", s % 3);
        let norms = rows.square().sum_dim_intlist(-1, false, Kind::Float).sqrt();
        assert_close("unit rows", &norms, &norms.ones_like(), 1e-5);
    }

    // Random slots: (N,) distinct ids shared by the batch; the target call reuses them.
    for s in 0..2 {
        let ids = random_ids(&samples[s]);
        let p = src[s].size()[2] * src[s].size()[3];
        assert_eq!(ids.size(), [n]);
        assert_eq!(ids.kind(), Kind::Int64);
        let (uniq, _, _) = ids.unique_dim(0, true, false, false);
        assert_eq!(uniq.size(), [n], "ids are distinct");
        assert!(ids.min().int64_value(&[]) >= 0 && ids.max().int64_value(&[]) < p);
        assert_close("keys", &keys[s], &project_by_hand(&vs, s, &rows_by_hand(&src[s], ids)), 1e-5);
        assert_close("queries", &queries[s], &project_by_hand(&vs, s, &rows_by_hand(&tgt[s], ids)), 1e-5);
    }

    // QS slot: per-image selection on the source, keys A_QS·X_src, queries A_QS·X_tgt.
    let sel = selection(&samples[2]);
    let direct = ops::qs_select(&src[2], n, QsMode::Global, 7, LocalLayout::Geometric, false).unwrap();
    assert_eq!(sel.indices.size(), [2, n]);
    assert_close("selection", &sel.indices, &direct.indices, 0.0);
    assert!(max_abs_diff(&sel.indices.get(0), &sel.indices.get(1)) > 0.0, "selection is per image");
    let routed_k = ops::qs_route(&src[2], &direct).unwrap().flatten(0, 1);
    let routed_q = ops::qs_route(&tgt[2], &direct).unwrap().flatten(0, 1);
    assert_close("QS keys", &keys[2], &project_by_hand(&vs, 2, &routed_k), 1e-5);
    assert_close("QS queries", &queries[2], &project_by_hand(&vs, 2, &routed_q), 1e-5);

    // The target call on the source maps reproduces the keys.
    let again = f.sample_target(&src, &samples).unwrap();
    for s in 0..3 {
        assert_close("same maps, same rows", &again[s], &keys[s], 1e-6);
    }

    // Target maps of another size than the source's are an error (not an out-of-range gather).
    let smaller: Vec<Tensor> = src.iter().map(|m| m.narrow(2, 0, 2).narrow(3, 0, 2)).collect();
    let err = f.sample_target(&smaller, &samples).err().expect("size mismatch").to_string();
    assert!(err.contains("positions"), "{err}");
}

#[test]
fn projector_injected_and_per_image_ids() {
    let src = maps(50);
    let n = 5;
    let injected = Tensor::from_slice(&[0i64, 99, 42, 7, 10]);

    let (vs, f) = projector(&projector_config(16, Some(QsMode::Global), vec![2]));
    let ids = [Some(injected.shallow_clone()), None, None];
    let (keys, samples) = f.sample_source(&src, n, &mut PatchSampler::new(1), Some(&ids)).unwrap();
    assert_close("injected ids kept", random_ids(&samples[0]), &injected, 0.0);
    assert_close("injected rows", &keys[0], &project_by_hand(&vs, 0, &rows_by_hand(&src[0], &injected)), 1e-5);
    assert_eq!(random_ids(&samples[1]).size(), [n], "None entries are drawn");

    // Injected ids must be int64 positions of the map.
    let bad = [Some(Tensor::from_slice(&[0i64, 100])), None, None];
    assert!(f.sample_source(&src, n, &mut PatchSampler::new(1), Some(&bad)).is_err());
    let bad = [Some(Tensor::from_slice(&[0.0f32, 1.0])), None, None];
    assert!(f.sample_source(&src, n, &mut PatchSampler::new(1), Some(&bad)).is_err());
    assert!(f.sample_source(&src, n, &mut PatchSampler::new(1), Some(&ids[..2])).is_err());

    // Per-image ids: (B, N), rows gathered per image; the target call reuses them.
    let cfg = ProjectorConfig { per_image_ids: true, ..projector_config(16, Some(QsMode::Global), vec![2]) };
    let (vs, f) = projector(&cfg);
    let (keys, samples) = f.sample_source(&src, n, &mut PatchSampler::new(2), None).unwrap();
    let ids = random_ids(&samples[0]);
    assert_eq!(ids.size(), [2, n]);
    assert!(max_abs_diff(&ids.get(0), &ids.get(1)) > 0.0);
    assert_close("per-image rows", &keys[0], &project_by_hand(&vs, 0, &rows_by_hand(&src[0], ids)), 1e-5);
    let tgt = maps(60);
    let queries = f.sample_target(&tgt, &samples).unwrap();
    assert_close("per-image queries", &queries[0], &project_by_hand(&vs, 0, &rows_by_hand(&tgt[0], ids)), 1e-5);
    let injected = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
    let ids = [Some(injected.shallow_clone()), None, None];
    let (keys, _) = f.sample_source(&src, 3, &mut PatchSampler::new(2), Some(&ids)).unwrap();
    assert_close("injected per-image", &keys[0], &project_by_hand(&vs, 0, &rows_by_hand(&src[0], &injected)), 1e-5);
}

#[test]
fn projector_modes_and_sizes() {
    let (src, tgt) = (maps(70), maps(80));

    // CUT (mode None): every slot random, qs_slots ignored.
    let (_, f) = projector(&projector_config(16, None, vec![2]));
    let (_, samples) = f.sample_source(&src, 4, &mut PatchSampler::new(3), None).unwrap();
    assert!(samples.iter().all(|s| matches!(s, SlotSample::Random { .. })));

    // Cross mode: the target call routes with softmax(X_src[sel] X_tgtᵀ) X_tgt.
    let (vs, f) = projector(&projector_config(16, Some(QsMode::Cross), vec![2]));
    let (_, samples) = f.sample_source(&src, 4, &mut PatchSampler::new(3), None).unwrap();
    let queries = f.sample_target(&tgt, &samples).unwrap();
    let routed = ops::qs_cross_route(&tgt[2], selection(&samples[2])).unwrap().flatten(0, 1);
    assert_close("cross queries", &queries[2], &project_by_hand(&vs, 2, &routed), 1e-5);

    // More patches than positions: random and global QS slots take all P positions.
    let (_, f) = projector(&projector_config(16, Some(QsMode::Global), vec![2]));
    let (keys, _) = f.sample_source(&src, 50, &mut PatchSampler::new(3), None).unwrap();
    let rows: Vec<i64> = keys.iter().map(|k| k.size()[0]).collect();
    assert_eq!(rows, [2 * 50, 2 * 50, 2 * 36]);

    // Without MLP: the L2-normalised sampled features themselves.
    let cfg = ProjectorConfig { use_mlp: false, ..projector_config(16, Some(QsMode::Local), vec![2]) };
    let (vs, f) = projector(&cfg);
    assert!(vs.variables().is_empty());
    let (keys, samples) = f.sample_source(&src, 6, &mut PatchSampler::new(3), None).unwrap();
    assert_eq!(keys[0].size(), [12, 3]);
    assert_close("no MLP", &keys[1], &l2(&rows_by_hand(&src[1], random_ids(&samples[1]))), 1e-6);
    let sel = selection(&samples[2]);
    assert!(sel.local_attn.is_some());
    assert_close("local keys", &keys[2], &l2(&ops::qs_route(&src[2], sel).unwrap().flatten(0, 1)), 1e-6);

    // Bad calls.
    let mut sampler = PatchSampler::new(3);
    assert!(f.sample_source(&src[..2], 4, &mut sampler, None).is_err(), "missing map");
    assert!(f.sample_source(&src, 0, &mut sampler, None).is_err(), "no patches");
    let wrong = vec![randn(1, &[2, 4, 10, 10]), src[1].shallow_clone(), src[2].shallow_clone()];
    assert!(f.sample_source(&wrong, 4, &mut sampler, None).is_err(), "wrong channels");
    let small = vec![src[0].shallow_clone(), src[1].shallow_clone(), randn(2, &[2, 8, 3, 3])];
    assert!(f.sample_target(&small, &samples).is_err(), "target map of another size");
    let (_, f) = projector(&projector_config(16, Some(QsMode::Global), vec![3]));
    assert!(f.sample_source(&src, 4, &mut sampler, None).is_err(), "QS slot out of range");
}

/// Two NCE terms in one pass give each term exactly what its own source and target calls
/// give: the same drawn ids (same draw order), the same selection per image, the same rows.
#[test]
fn projector_terms_in_one_pass_equal_separate_calls() {
    let terms = [(maps(90), maps(91)), (maps(92), maps(93))];
    let stacked = |pick: fn(&(Vec<Tensor>, Vec<Tensor>)) -> &Vec<Tensor>| -> Vec<Tensor> {
        (0..CHANNELS.len()).map(|s| Tensor::cat(&[&pick(&terms[0])[s], &pick(&terms[1])[s]], 0)).collect()
    };
    let (feat_k, feat_q) = (stacked(|t| &t.0), stacked(|t| &t.1));
    for (mode, per_image) in
        [(None, false), (Some(QsMode::Global), false), (Some(QsMode::Global), true), (Some(QsMode::Local), false)]
    {
        let cfg = ProjectorConfig { per_image_ids: per_image, ..projector_config(16, mode, vec![2]) };
        let (_, f) = projector(&cfg);
        let mut sampler = PatchSampler::new(7);
        let stacked = StackedTerms { feat_k: &feat_k, feat_q: &feat_q, images: 2, ids: &[None, None] };
        let together = f.keys_and_queries_of_terms(&stacked, 5, &mut sampler).unwrap();
        let mut sampler = PatchSampler::new(7);
        for (t, (src, tgt)) in terms.iter().enumerate() {
            let (keys, samples) = f.sample_source(src, 5, &mut sampler, None).unwrap();
            let queries = f.sample_target(tgt, &samples).unwrap();
            for s in 0..CHANNELS.len() {
                let what = format!("mode {mode:?}, per-image {per_image}, term {t}, slot {s}");
                assert_close(&format!("{what} keys"), &together[t].0[s], &keys[s], 1e-6);
                assert_close(&format!("{what} queries"), &together[t].1[s], &queries[s], 1e-6);
            }
        }
    }
    // injected ids per term, shared (N,) for one term and per image (B, N) for the other
    let (_, f) = projector(&projector_config(16, Some(QsMode::Global), vec![2]));
    let shared = [Some(Tensor::from_slice(&[0i64, 5, 9])), Some(Tensor::from_slice(&[1i64, 2, 3])), None];
    let per_image =
        [Some(Tensor::from_slice(&[4i64, 2, 7, 8, 1, 0]).view([2, 3])), Some(Tensor::from_slice(&[6i64, 5, 4])), None];
    let stacked = StackedTerms { feat_k: &feat_k, feat_q: &feat_q, images: 2, ids: &[Some(&shared), Some(&per_image)] };
    let together = f.keys_and_queries_of_terms(&stacked, 3, &mut PatchSampler::new(1)).unwrap();
    for (t, ((src, _), ids)) in terms.iter().zip([&shared, &per_image]).enumerate() {
        let (keys, _) = f.sample_source(src, 3, &mut PatchSampler::new(1), Some(ids)).unwrap();
        for s in 0..2 {
            assert_close(&format!("injected, term {t}, slot {s}"), &together[t].0[s], &keys[s], 1e-6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the fused instance norm + ReLU node

/// The two ops as tch composes them: per (b, c) normalisation over H·W, then ReLU.
fn norm_then_relu(x: &Tensor) -> Tensor {
    x.instance_norm(None::<Tensor>, None, None, None, true, 0.1, 1e-5, false).relu()
}

#[test]
fn fused_instance_norm_relu_equals_the_two_ops_with_gradients() {
    use qs_attn::nets::norm_relu::instance_norm_relu;
    // float64, two images, channels with different means and scales
    let x0 = seeded(5, || Tensor::randn([2, 3, 5, 4], (Kind::Double, Device::Cpu)))
        * Tensor::from_slice(&[1.0f64, 3.0, 0.2]).view([1, 3, 1, 1])
        + Tensor::from_slice(&[0.5f64, -2.0, 0.0]).view([1, 3, 1, 1]);
    let upstream = seeded(6, || Tensor::randn([2, 3, 5, 4], (Kind::Double, Device::Cpu)));
    let x_fused = x0.copy().set_requires_grad(true);
    let x_plain = x0.copy().set_requires_grad(true);
    let y_fused = instance_norm_relu(&x_fused, 1e-5).unwrap();
    let y_plain = norm_then_relu(&x_plain);
    assert_close("values", &y_fused, &y_plain, 1e-12);
    (&y_fused * &upstream).sum(Kind::Double).backward();
    (&y_plain * &upstream).sum(Kind::Double).backward();
    assert_close("input gradient", &x_fused.grad(), &x_plain.grad(), 1e-12);
    // and against central differences of the plain ops
    let h = 1e-6;
    let flat = x0.flatten(0, -1);
    for idx in [0i64, 17, 45, 100] {
        let bump = |delta: f64| {
            let x = flat.copy();
            let _ = x.get(idx).f_add_scalar_(delta).unwrap();
            (norm_then_relu(&x.view([2, 3, 5, 4])) * &upstream).sum(Kind::Double).double_value(&[])
        };
        let numeric = (bump(h) - bump(-h)) / (2.0 * h);
        let analytic = x_fused.grad().flatten(0, -1).double_value(&[idx]);
        assert!((numeric - analytic).abs() < 1e-6, "element {idx}: {numeric} vs {analytic}");
    }
}

#[test]
fn fused_instance_norm_relu_keeps_a_low_precision_input_dtype() {
    use qs_attn::nets::norm_relu::instance_norm_relu;
    // one NCHW image (the whole-batch view) and three channels-last images (image by image,
    // statistics written into preallocated rows of the dtype aten gives them)
    for (shape, channels_last) in [([1i64, 4, 6, 6], false), ([3, 4, 6, 6], true)] {
        let x32 = seeded(7, || Tensor::randn(shape, (Kind::Float, Device::Cpu)));
        let x = if channels_last { nhwc(&x32) } else { x32.shallow_clone() }
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let y = instance_norm_relu(&x, 1e-5).unwrap();
        assert_eq!(y.kind(), Kind::BFloat16);
        assert_eq!(is_nhwc(&y), channels_last, "{shape:?}: the output keeps the input's layout");
        // within bfloat16 rounding (8 significant bits) of the float32 result
        let x_exact = x.detach().to_kind(Kind::Float).set_requires_grad(true);
        let exact = norm_then_relu(&x_exact);
        assert!(max_abs_diff(&y.to_kind(Kind::Float), &exact) <= 1e-2 * (1.0 + exact.abs().max().double_value(&[])));
        let upstream = seeded(8, || Tensor::randn(shape, (Kind::Float, Device::Cpu)));
        (y.to_kind(Kind::Float) * &upstream).sum(Kind::Float).backward();
        (&exact * &upstream).sum(Kind::Float).backward();
        assert_eq!(x.grad().kind(), Kind::BFloat16, "the gradient has the input's dtype");
        let scale = 1.0 + x_exact.grad().abs().max().double_value(&[]);
        assert!(
            max_abs_diff(&x.grad().to_kind(Kind::Float), &x_exact.grad()) <= 2e-2 * scale,
            "{shape:?}: the bfloat16 gradient is the float32 one within bfloat16 rounding"
        );
    }
}

#[test]
fn generator_taps_at_a_norm_keep_its_own_output() {
    // element 2 is the first instance norm, 3 its ReLU: asking for 2 gets the norm's output
    // (unfused there), asking for 3 the ReLU's
    let vs = nn::VarStore::new(Device::Cpu);
    let g = Generator::new(&vs.root(), &GeneratorConfig { ngf: 4, n_blocks: 1, ..GeneratorConfig::default() });
    let x = images(8, &[1, 3, 16, 16]);
    let taps = g.encode(&x, &[2, 3]).unwrap();
    assert!(taps[0].min().double_value(&[]) < 0.0, "the norm's output has negative values");
    assert_close("ReLU of the tapped norm", &taps[1], &taps[0].relu(), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// the padding nodes that keep no tensor

/// Replication padding by `n` written out with indices: padded index `i` reads `i − n` clamped
/// to the edge.
fn replicate_pad_by_index(x: &Tensor, n: i64) -> Tensor {
    let clamp = |len: i64| Tensor::from_slice(&(-n..len + n).map(|i| i.clamp(0, len - 1)).collect::<Vec<i64>>());
    let (h, w) = (x.size()[2], x.size()[3]);
    x.index_select(2, &clamp(h)).index_select(3, &clamp(w))
}

#[test]
fn padding_nodes_equal_the_index_form_in_values_and_gradients() {
    use qs_attn::nets::pad::{pad2d, PadMode};
    let by_index: [(PadMode, fn(&Tensor, i64) -> Tensor); 2] =
        [(PadMode::Reflection, reflect_pad_by_index), (PadMode::Replication, replicate_pad_by_index)];
    for (mode, reference) in by_index {
        for n in [1i64, 3] {
            let x0 = seeded(11, || Tensor::randn([2, 3, 5, 7], (Kind::Double, Device::Cpu)));
            let upstream = seeded(12, || Tensor::randn([2, 3, 5 + 2 * n, 7 + 2 * n], (Kind::Double, Device::Cpu)));
            let (x_ours, x_ref) = (x0.copy().set_requires_grad(true), x0.copy().set_requires_grad(true));
            let (y_ours, y_ref) = (pad2d(&x_ours, mode, n).unwrap(), reference(&x_ref, n));
            assert_close(&format!("{mode:?} {n}: values"), &y_ours, &y_ref, 0.0);
            (&y_ours * &upstream).sum(Kind::Double).backward();
            (&y_ref * &upstream).sum(Kind::Double).backward();
            assert_close(&format!("{mode:?} {n}: input gradient"), &x_ours.grad(), &x_ref.grad(), 1e-12);
        }
    }
}

/// A gradient penalty through `step` at `x0`: L = Σ c·step(x)², G = ∂L/∂x (with its graph),
/// and ∂(Σ v·G)/∂x; returns (G, ∂(Σ v·G)/∂x).
fn penalty_derivatives(step: &dyn Fn(&Tensor) -> Tensor, x0: &Tensor, c: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
    let x = x0.copy().set_requires_grad(true);
    let loss = (step(&x).square() * c).sum(Kind::Double);
    let g = Tensor::run_backward(&[loss], &[&x], true, true).remove(0);
    let gg = Tensor::run_backward(&[(&g * v).sum(Kind::Double)], &[&x], false, false).remove(0);
    (g, gg)
}

#[test]
fn padding_nodes_are_twice_differentiable() {
    // penalty_derivatives through a pad against the same through the index form
    use qs_attn::nets::pad::{pad2d, PadMode};
    let x0 = seeded(13, || Tensor::randn([1, 2, 4, 6], (Kind::Double, Device::Cpu)));
    let c = seeded(14, || Tensor::randn([1, 2, 6, 8], (Kind::Double, Device::Cpu)));
    let v = seeded(15, || Tensor::randn([1, 2, 4, 6], (Kind::Double, Device::Cpu)));
    let (g_ours, gg_ours) = penalty_derivatives(&|x| pad2d(x, PadMode::Reflection, 1).unwrap(), &x0, &c, &v);
    let (g_ref, gg_ref) = penalty_derivatives(&|x| reflect_pad_by_index(x, 1), &x0, &c, &v);
    assert_close("first derivative", &g_ours, &g_ref, 1e-12);
    assert_close("second derivative", &gg_ours, &gg_ref, 1e-12);
    assert!(gg_ref.abs().max().double_value(&[]) > 0.1, "the check is not vacuous");
}

#[test]
fn leaky_relu_is_the_written_out_form_twice_differentiably() {
    use qs_attn::nets::leaky_relu::leaky_relu;
    // exact zeros included: both forms have the gradient `slope` there
    let x0 = seeded(17, || Tensor::randn([2, 3, 5, 5], (Kind::Double, Device::Cpu)));
    let x0 = &x0 * x0.abs().gt(0.3).to_kind(Kind::Double);
    let c = seeded(18, || Tensor::randn([2, 3, 5, 5], (Kind::Double, Device::Cpu)));
    let v = seeded(19, || Tensor::randn([2, 3, 5, 5], (Kind::Double, Device::Cpu)));
    assert_close("values", &leaky_relu(&x0, 0.2).unwrap(), &leaky_by_hand(&x0, 0.2), 0.0);
    let (g_ours, gg_ours) = penalty_derivatives(&|x| leaky_relu(x, 0.2).unwrap(), &x0, &c, &v);
    let (g_ref, gg_ref) = penalty_derivatives(&|x| leaky_by_hand(x, 0.2), &x0, &c, &v);
    assert_close("first derivative", &g_ours, &g_ref, 1e-12);
    assert_close("second derivative", &gg_ours, &gg_ref, 1e-12);
    assert!(gg_ref.abs().max().double_value(&[]) > 0.1, "the check is not vacuous");
    let low = x0.to_kind(Kind::BFloat16);
    assert_eq!(leaky_relu(&low, 0.2).unwrap().kind(), Kind::BFloat16);
    assert!(leaky_relu(&Tensor::from_slice(&[1i64, -2]), 0.2).is_err(), "integer input");
}

#[test]
fn l2_normalized_rows_and_their_gradient_are_the_written_out_form() {
    use qs_attn::nets::l2_normalize::l2_normalize_rows;
    // v / (sqrt(sum v²) + ε) through aten's autograd, as the reference writes it
    let by_hand = |v: &Tensor| v / (v.square().sum_dim_intlist(-1, true, Kind::Double).sqrt() + 1e-7);
    let v0 = seeded(20, || Tensor::randn([6, 5], (Kind::Double, Device::Cpu)));
    let _ = v0.get(1).f_mul_scalar_(1e-6).unwrap(); // a tiny row: ε matters there
    let du = seeded(21, || Tensor::randn([6, 5], (Kind::Double, Device::Cpu)));
    let run = |f: &dyn Fn(&Tensor) -> Tensor, v0: &Tensor| {
        let v = v0.copy().set_requires_grad(true);
        let u = f(&v);
        (u.detach(), Tensor::run_backward(&[(&u * &du).sum(Kind::Double)], &[&v], false, false).remove(0))
    };
    let (u_ours, dv_ours) = run(&|v| l2_normalize_rows(v, 1e-7).unwrap(), &v0);
    let (u_ref, dv_ref) = run(&by_hand, &v0);
    assert_close("rows", &u_ours, &u_ref, 1e-15);
    assert_close("gradient", &dv_ours, &dv_ref, 1e-9 * dv_ref.abs().max().double_value(&[]));
    assert!(
        dv_ref.get(1).abs().max().double_value(&[]) > 1e3,
        "the tiny row's gradient is large: the check is not vacuous"
    );
    // a zero row: no gradient there (NaN in both forms), the other rows unaffected
    let _ = v0.get(2).f_zero_().unwrap();
    let (u_ours, dv_ours) = run(&|v| l2_normalize_rows(v, 1e-7).unwrap(), &v0);
    let (u_ref, dv_ref) = run(&by_hand, &v0);
    assert_close("rows with a zero row", &u_ours, &u_ref, 1e-15);
    assert!(
        bool::try_from(dv_ours.get(2).isnan().all()).unwrap() && bool::try_from(dv_ref.get(2).isnan().all()).unwrap()
    );
    let others = Tensor::from_slice(&[0i64, 1, 3, 4, 5]);
    let (a, b) = (dv_ours.index_select(0, &others), dv_ref.index_select(0, &others));
    assert_close("other rows' gradient", &a, &b, 1e-9 * b.abs().max().double_value(&[]));
    assert!(l2_normalize_rows(&Tensor::ones([2, 3, 4], (Kind::Float, Device::Cpu)), 1e-7).is_err(), "3-D input");
}

#[test]
fn padding_nodes_keep_a_low_precision_dtype_and_reject_bad_shapes() {
    use qs_attn::nets::pad::{pad2d, PadMode};
    let x = seeded(16, || Tensor::randn([1, 2, 4, 4], (Kind::Float, Device::Cpu)))
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let y = pad2d(&x, PadMode::Reflection, 1).unwrap();
    assert_eq!(y.kind(), Kind::BFloat16);
    y.to_kind(Kind::Float).sum(Kind::Float).backward();
    assert_eq!(x.grad().kind(), Kind::BFloat16, "the gradient has the input's dtype");
    let flat = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let err = pad2d(&flat, PadMode::Reflection, 1).unwrap_err().to_string();
    assert!(err.contains("(B, C, H, W)"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// the resampling nodes that keep no tensor

/// `c × 1 × k × k` copies of `scale · t tᵀ / (Σt)²` in `kind`.
fn binomial_kernel(taps: &[f64], scale: f64, c: i64, kind: Kind) -> Tensor {
    let k = taps.len() as i64;
    let t = Tensor::from_slice(taps);
    let kernel = t.outer(&t) * (scale / taps.iter().sum::<f64>().powi(2));
    kernel.view([1, 1, k, k]).expand([c, 1, k, k], false).to_kind(kind)
}

/// Down written out (index-form reflection pad, aten's strided depthwise convolution), the
/// kernel in `x`'s dtype.
fn down_by_index(x: &Tensor) -> Tensor {
    let c = x.size()[1];
    let k = binomial_kernel(&[1.0, 2.0, 1.0], 1.0, c, x.kind());
    reflect_pad_by_index(x, 1).conv2d(&k, None::<Tensor>, [2, 2], [0, 0], [1, 1], c)
}

/// Up written out (index-form replication pad, aten's transposed depthwise convolution, the
/// border rows and columns dropped), the kernel in `x`'s dtype.
fn up_by_index(x: &Tensor) -> Tensor {
    let c = x.size()[1];
    let k = binomial_kernel(&[1.0, 3.0, 3.0, 1.0], 4.0, c, x.kind());
    let full = replicate_pad_by_index(x, 1).conv_transpose2d(&k, None::<Tensor>, [2, 2], [2, 2], [0, 0], c, [1, 1]);
    let (h, w) = (full.size()[2], full.size()[3]);
    full.narrow(2, 1, h - 2).narrow(3, 1, w - 2)
}

/// Down(3) and Up(3) with float64 filters.
fn resamplers_f64() -> (nn::VarStore, Down, Up) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let (down, up) = (Down::new(&(vs.root() / "down"), 3), Up::new(&(vs.root() / "up"), 3));
    (vs, down, up)
}

#[test]
fn resampling_nodes_equal_the_written_out_ops_in_values_and_gradients() {
    let (_vs, down, up) = resamplers_f64();
    let ours: [(&str, &dyn Fn(&Tensor) -> Tensor, fn(&Tensor) -> Tensor); 2] =
        [("Down", &|x| down.forward(x), down_by_index), ("Up", &|x| up.forward(x), up_by_index)];
    for (name, node, reference) in ours {
        // odd and even sides: Down's backward restores the padded side with output padding 0 / 1
        for (h, w) in [(5i64, 7i64), (6, 8), (2, 3)] {
            let x0 = seeded(21, || Tensor::randn([2, 3, h, w], (Kind::Double, Device::Cpu)));
            let (x_ours, x_ref) = (x0.copy().set_requires_grad(true), x0.copy().set_requires_grad(true));
            let (y_ours, y_ref) = (node(&x_ours), reference(&x_ref));
            assert_close(&format!("{name} {h}×{w}: values"), &y_ours, &y_ref, 1e-14);
            let upstream = seeded(22, || Tensor::randn(y_ref.size().as_slice(), (Kind::Double, Device::Cpu)));
            (&y_ours * &upstream).sum(Kind::Double).backward();
            (&y_ref * &upstream).sum(Kind::Double).backward();
            assert_close(&format!("{name} {h}×{w}: input gradient"), &x_ours.grad(), &x_ref.grad(), 1e-12);
        }
    }
}

#[test]
fn resampling_nodes_are_twice_differentiable() {
    // penalty_derivatives through the step against the same through the written-out ops
    let (_vs, down, up) = resamplers_f64();
    let ours: [(&str, &dyn Fn(&Tensor) -> Tensor, fn(&Tensor) -> Tensor); 2] =
        [("Down", &|x| down.forward(x), down_by_index), ("Up", &|x| up.forward(x), up_by_index)];
    for (name, node, reference) in ours {
        let x0 = seeded(23, || Tensor::randn([1, 3, 5, 6], (Kind::Double, Device::Cpu)));
        let c = seeded(24, || Tensor::randn(reference(&x0).size().as_slice(), (Kind::Double, Device::Cpu)));
        let v = seeded(25, || Tensor::randn([1, 3, 5, 6], (Kind::Double, Device::Cpu)));
        let (g_ours, gg_ours) = penalty_derivatives(node, &x0, &c, &v);
        let (g_ref, gg_ref) = penalty_derivatives(&reference, &x0, &c, &v);
        assert_close(&format!("{name}: first derivative"), &g_ours, &g_ref, 1e-12);
        assert_close(&format!("{name}: second derivative"), &gg_ours, &gg_ref, 1e-12);
        assert!(gg_ref.abs().max().double_value(&[]) > 0.01, "{name}: the check is not vacuous");
    }
}

#[test]
fn resampling_nodes_keep_a_low_precision_dtype_and_reject_bad_shapes() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::BFloat16);
    let (down, up) = (Down::new(&(vs.root() / "down"), 2), Up::new(&(vs.root() / "up"), 2));
    let steps: [(&str, &dyn Fn(&Tensor) -> Result<Tensor, tch::TchError>); 2] =
        [("Down", &|x| down.f_forward(x)), ("Up", &|x| up.f_forward(x))];
    for (name, step) in steps {
        let x = seeded(26, || Tensor::randn([1, 2, 4, 4], (Kind::Float, Device::Cpu)))
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let y = step(&x).unwrap();
        assert_eq!(y.kind(), Kind::BFloat16, "{name}");
        y.to_kind(Kind::Float).sum(Kind::Float).backward();
        assert_eq!(x.grad().kind(), Kind::BFloat16, "{name}: the gradient has the input's dtype");
        let unbatched = Tensor::zeros([2, 4, 4], (Kind::BFloat16, Device::Cpu)).set_requires_grad(true);
        let err = step(&unbatched).unwrap_err().to_string();
        assert!(err.contains("(B, C, H, W)"), "{name}: {err}");
    }
}

#[test]
fn resampling_nodes_under_autocast_compute_as_the_plain_ops_would() {
    // bf16 autocast on the CPU: a float32 input is cast for the convolution, the output is
    // bfloat16 and the gradient float32, as with the written-out ops
    use qs_attn::train::precision::{Bf16Autocast, Precision};
    let vs = nn::VarStore::new(Device::Cpu);
    let (down, up) = (Down::new(&(vs.root() / "down"), 3), Up::new(&(vs.root() / "up"), 3));
    let steps: [(&str, &dyn Fn(&Tensor) -> Tensor, fn(&Tensor) -> Tensor); 2] =
        [("Down", &|x| down.forward(x), down_by_index), ("Up", &|x| up.forward(x), up_by_index)];
    for (name, node, reference) in steps {
        let x0 = seeded(27, || Tensor::randn([2, 3, 6, 7], (Kind::Float, Device::Cpu)));
        let run = |step: &dyn Fn(&Tensor) -> Tensor| {
            let x = x0.copy().set_requires_grad(true);
            let y = {
                let _autocast = Bf16Autocast::scope(Precision::Bf16, Device::Cpu);
                step(&x)
            };
            let upstream = seeded(28, || Tensor::randn(y.size().as_slice(), (Kind::Float, Device::Cpu)));
            (y.to_kind(Kind::Float) * upstream).sum(Kind::Float).backward();
            (y, x.grad())
        };
        let ((y_ours, dx_ours), (y_ref, dx_ref)) = (run(node), run(&reference));
        assert_eq!((y_ours.kind(), y_ref.kind()), (Kind::BFloat16, Kind::BFloat16), "{name}");
        assert_close(&format!("{name}: values"), &y_ours, &y_ref, 0.0);
        assert_eq!(dx_ours.kind(), Kind::Float, "{name}");
        // both gradients are bfloat16 products cast up; their accumulation order may differ
        assert_close(
            &format!("{name}: input gradient"),
            &dx_ours,
            &dx_ref,
            0.02 * dx_ref.abs().max().double_value(&[]),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// channels-last inputs keep their layout through pads, resampling and instance norms

/// `t` stored channels-last (NHWC in memory), same values.
/// An op on a channels-last float64 input against a reference on the NCHW one: the op's output
/// and (for a channels-last upstream gradient) its input gradient are channels-last, and both
/// equal the reference's within `tol`; with an NCHW upstream gradient the input gradient is
/// equal as well.
fn check_channels_last(
    name: &str,
    shape: &[i64],
    op: &dyn Fn(&Tensor) -> Tensor,
    reference: &dyn Fn(&Tensor) -> Tensor,
    tol: f64,
) {
    let x0 = seeded(31, || Tensor::randn(shape, (Kind::Double, Device::Cpu)));
    let y_ref_shape = reference(&x0).size();
    let upstream = seeded(32, || Tensor::randn(y_ref_shape.as_slice(), (Kind::Double, Device::Cpu)));
    for upstream_nhwc in [true, false] {
        let x_ours = nhwc(&x0).set_requires_grad(true);
        let x_ref = x0.copy().set_requires_grad(true);
        let (y_ours, y_ref) = (op(&x_ours), reference(&x_ref));
        assert!(is_nhwc(&y_ours), "{name}: the output is channels-last, strides {:?}", y_ours.stride());
        assert_close(&format!("{name}: values"), &y_ours, &y_ref, tol);
        let dy = if upstream_nhwc { nhwc(&upstream) } else { upstream.copy() };
        // (the product's backward hands each op the upstream tensor's layout)
        (&y_ours * &dy).sum(Kind::Double).backward();
        (&y_ref * &upstream).sum(Kind::Double).backward();
        if upstream_nhwc {
            assert!(is_nhwc(&x_ours.grad()), "{name}: the input gradient is channels-last");
        }
        assert_close(
            &format!("{name}: input gradient (NHWC upstream: {upstream_nhwc})"),
            &x_ours.grad(),
            &x_ref.grad(),
            tol,
        );
    }
}

#[test]
fn padding_keeps_the_channels_last_layout() {
    use qs_attn::nets::pad::{pad2d, PadMode};
    for n in [1i64, 3] {
        check_channels_last(
            &format!("reflection {n}"),
            &[2, 5, 6, 7],
            &|x| pad2d(x, PadMode::Reflection, n).unwrap(),
            &|x| reflect_pad_by_index(x, n),
            1e-12,
        );
        check_channels_last(
            &format!("replication {n}"),
            &[2, 5, 6, 7],
            &|x| pad2d(x, PadMode::Replication, n).unwrap(),
            &|x| replicate_pad_by_index(x, n),
            1e-12,
        );
    }
    // without a gradient (the plain aten path)
    let x = nhwc(&seeded(33, || Tensor::randn([2, 5, 6, 7], (Kind::Float, Device::Cpu))));
    let y = pad2d(&x, PadMode::Reflection, 1).unwrap();
    assert!(is_nhwc(&y));
    assert_close("reflection without a gradient", &y, &reflect_pad_by_index(&x, 1), 0.0);
}

#[test]
fn resampling_keeps_the_channels_last_layout() {
    let (_vs, down, up) = resamplers_f64();
    check_channels_last("Down", &[2, 3, 7, 6], &|x| down.forward(x), &down_by_index, 1e-12);
    check_channels_last("Up", &[2, 3, 5, 6], &|x| up.forward(x), &up_by_index, 1e-12);
}

#[test]
fn instance_norms_keep_the_channels_last_layout() {
    use qs_attn::nets::norm_relu::{instance_norm, instance_norm_relu};
    let norm_by_hand = |x: &Tensor| instance_norm_by_hand(x);
    let relu_by_hand = |x: &Tensor| instance_norm_by_hand(x).relu();
    // several images (normalised image by image) and one (the whole-batch view)
    for shape in [[3i64, 4, 5, 6], [1, 4, 5, 6]] {
        check_channels_last(
            &format!("norm + ReLU {shape:?}"),
            &shape,
            &|x| instance_norm_relu(x, 1e-5).unwrap(),
            &relu_by_hand,
            1e-10,
        );
        check_channels_last(
            &format!("norm {shape:?}"),
            &shape,
            &|x| instance_norm(x, 1e-5).unwrap(),
            &norm_by_hand,
            1e-10,
        );
    }
}

#[test]
fn channels_last_generator_and_discriminator_equal_the_nchw_ones() {
    // every layer of both networks on a channels-last batch (the fast path's layout) against
    // the same networks on NCHW tensors: the same values and parameter gradients
    let cfg = GeneratorConfig { ngf: 4, n_blocks: 2, ..GeneratorConfig::default() };
    let (mut vs_g, g) = generator(&cfg);
    let (mut vs_d, d) = discriminator(&DiscriminatorConfig { ndf: 4, ..Default::default() });
    vs_g.set_kind(Kind::Double);
    vs_d.set_kind(Kind::Double);
    let x = seeded(34, || Tensor::randn([2, 3, 32, 32], (Kind::Double, Device::Cpu)));
    let run = |x: &Tensor| {
        for (_, mut p) in vs_g.variables().into_iter().chain(vs_d.variables()) {
            p.zero_grad();
        }
        let fake = g.f_forward(x).unwrap();
        let score = d.f_forward(&fake).unwrap();
        let upstream = seeded(35, || Tensor::randn(score.size().as_slice(), (Kind::Double, Device::Cpu)));
        (&score * upstream).sum(Kind::Double).backward();
        let mut grads: Vec<(String, Tensor)> = [("G", &vs_g), ("D", &vs_d)]
            .iter()
            .flat_map(|(net, vs)| vs.variables().into_iter().map(move |(k, p)| (format!("{net}.{k}"), p)))
            .filter(|(_, p)| p.requires_grad())
            .map(|(k, p)| (k, p.grad().copy()))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (fake, score, grads)
    };
    let (fake_nchw, score_nchw, grads_nchw) = run(&x);
    let (fake_nhwc, score_nhwc, grads_nhwc) = run(&nhwc(&x));
    assert!(is_nhwc(&fake_nhwc), "the translation stays channels-last");
    assert_close("translation", &fake_nhwc, &fake_nchw, 1e-10);
    assert_close("discriminator", &score_nhwc, &score_nchw, 1e-10);
    for ((name, a), (_, b)) in grads_nhwc.iter().zip(&grads_nchw) {
        assert_close(&format!("gradient of {name}"), a, b, 1e-9 * (1.0 + b.abs().max().double_value(&[])));
    }
}

#[test]
fn projector_rows_of_channels_last_maps_equal_the_nchw_ones_and_keep_the_layout() {
    // random slots at shared (N,) and per-image (B, N) ids: the same rows, the same gradients,
    // and the gradient of a channels-last map is channels-last (NCHW stays NCHW)
    for per_image_ids in [false, true] {
        let cfg = ProjectorConfig { per_image_ids, ..projector_config(16, None, vec![]) };
        let (_vs, f) = projector(&cfg);
        let mut sampler = PatchSampler::new(9);
        let (_, samples) = f.sample_source(&maps(50), 12, &mut sampler, None).unwrap();
        let run = |channels_last: bool| {
            let feats: Vec<Tensor> = maps(60)
                .iter()
                .map(|m| if channels_last { nhwc(m) } else { m.copy() }.set_requires_grad(true))
                .collect();
            let rows = f.sample_target(&feats, &samples).unwrap();
            let loss: Tensor =
                rows.iter().enumerate().map(|(s, r)| (r * (s as f64 + 1.0)).sin().sum(Kind::Float)).sum();
            loss.backward();
            (rows, feats.iter().map(|m| m.grad()).collect::<Vec<_>>())
        };
        let ((rows_nchw, grads_nchw), (rows_nhwc, grads_nhwc)) = (run(false), run(true));
        for s in 0..rows_nchw.len() {
            assert_close(
                &format!("rows of slot {s} (per-image ids: {per_image_ids})"),
                &rows_nhwc[s],
                &rows_nchw[s],
                1e-6,
            );
            assert_close(&format!("map gradient of slot {s}"), &grads_nhwc[s], &grads_nchw[s], 1e-6);
            assert!(grads_nchw[s].is_contiguous(), "slot {s}: NCHW gradient for an NCHW map");
            // (slot 0 has C = 3 > 1, so NHWC differs from NCHW for every slot)
            assert!(
                is_nhwc(&grads_nhwc[s]),
                "slot {s}: NHWC gradient for a channels-last map, strides {:?}",
                grads_nhwc[s].stride()
            );
        }
    }
}
