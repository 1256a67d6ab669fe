//! A tiny deterministic pseudo-random generator for election timeouts.
//!
//! The core must be reproducible from the seed its caller passes in (the
//! simulation replays a failing run from one number), so it never touches a
//! thread-local or OS random source. xorshift64* is plenty for spreading
//! election timeouts and costs a few instructions.

/// xorshift64* seeded through splitmix64 (so nearby seeds give unrelated
/// streams, and seed 0 is fine).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift must never hold 0.
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough value in `[0, n)`; `n` must be > 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        // The high bits of xorshift64* are the good ones; the modulo bias is
        // irrelevant for timeouts of a few dozen ticks.
        (self.next_u64() >> 16) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_values_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut c = Rng::new(8);
        let xs: Vec<u64> = (0..16).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.below(10)).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.below(10)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.iter().all(|&x| x < 10));
    }
}
