//! Training options and the learning-rate schedule (docs/algorithm.md §11.1, §11.3, T12, Q23).
use qs_attn::train::config::TrainConfig;
use qs_attn::train::options::Mode;

#[test]
fn lr_multipliers_oracle_t12() {
    let cfg = TrainConfig::default(); // n_epochs = n_epochs_decay = 200, epoch_count = 1
    for (epoch, expected) in [(1, 1.0), (200, 1.0), (201, 0.99502488), (300, 0.50248756), (400, 0.00497512)] {
        let got = cfg.lr_multiplier(epoch);
        assert!((got - expected).abs() < 1e-8, "epoch {epoch}: {got} vs {expected}");
    }
}

#[test]
fn defaults_are_the_reference_options() {
    let cfg = TrainConfig::default();
    assert_eq!((cfg.lr, cfg.beta1, cfg.beta2), (2e-4, 0.5, 0.999));
    assert_eq!((cfg.load_size, cfg.crop_size, cfg.num_patches, cfg.netf_nc), (286, 256, 256, 256));
    assert_eq!(cfg.nce_layers, vec![0, 4, 8, 12, 16]);
    assert_eq!((cfg.nce_t, cfg.lambda_gan, cfg.lambda_nce, cfg.nce_idt), (0.07, 1.0, 1.0, true));
    assert_eq!((cfg.gan_mode.as_str(), cfg.init_type.as_str(), cfg.init_gain), ("lsgan", "xavier", 0.02));
    assert_eq!(cfg.qs_slot_list(), vec![3, 4]);
    cfg.validate().unwrap();
}

#[test]
fn options_parse_with_reference_names_and_reject_unknown_ones() {
    let cfg = TrainConfig::from_json(r#"{"lambda_NCE": 2.0, "nce_T": 0.1, "netF_nc": 128, "mode": "local"}"#).unwrap();
    assert_eq!((cfg.lambda_nce, cfg.nce_t, cfg.netf_nc, cfg.mode.as_str()), (2.0, 0.1, 128, "local"));
    let err = TrainConfig::from_json(r#"{"n_epoch": 3}"#).unwrap_err().to_string();
    assert!(err.contains("unknown field `n_epoch`"), "{err}");
}

#[test]
fn impossible_sizes_are_rejected_with_the_option_names() {
    let small = TrainConfig { crop_size: 32, load_size: 36, ..TrainConfig::default() };
    let err = small.validate().unwrap_err().to_string();
    assert!(err.contains("crop_size 32") && err.contains("num_patches = 256") && err.contains("Q23"), "{err}");
    let ok = TrainConfig { crop_size: 64, load_size: 72, ..TrainConfig::default() }; // 16x16 = 256 positions
    ok.validate().unwrap();
    let bad_load = TrainConfig { load_size: 128, ..TrainConfig::default() };
    assert!(bad_load.validate().unwrap_err().to_string().contains("load_size"));
    let cut = TrainConfig { mode: Mode(None), crop_size: 32, load_size: 36, ..TrainConfig::default() };
    cut.validate().unwrap(); // random sampling takes min(N, P): no constraint
}
