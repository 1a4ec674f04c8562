//! The crate's one random generator (patch ids, flip coins, data augmentation).

/// SplitMix64 (Steele, Lea & Flood, 2014): a 64-bit counter passed through a bijective mixer.
/// Small, fast, statistically sound for sampling and augmentation draws, and its whole state
/// is one `u64` (stored in checkpoints). The data loader seeds one per item from
/// `(seed, epoch, item)`, so results never depend on which thread computed them.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function (a bijection of u64).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator seeded by a hash of several words, e.g. `(seed, epoch, item)`; tuples of
    /// different lengths or orders give unrelated streams.
    pub fn from_parts(parts: &[u64]) -> SplitMix64 {
        let mut h = mix64(0x243F_6A88_85A3_08D3 ^ parts.len() as u64);
        for &p in parts {
            h = mix64(h.wrapping_add(GOLDEN) ^ mix64(p.wrapping_add(GOLDEN)));
        }
        SplitMix64::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// The state, to store; `SplitMix64::new(state)` continues the same stream.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Uniform in `0..n` (`n = 0` gives 0), unbiased: Lemire's multiply-shift with rejection.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An independent generator seeded from this one's next output.
    pub fn split(&mut self) -> SplitMix64 {
        SplitMix64::new(self.next_u64())
    }
}
