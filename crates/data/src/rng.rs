use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A ChaCha8 stream determined by `(seed, purpose)`.
///
/// Every random draw in noisegeom goes through here, so streams are independent across
/// purposes (data, init, sampling, probes) and identical on every platform and backend.
pub fn seeded_rng(seed: u64, purpose: &str) -> ChaCha8Rng {
    // FNV-1a over the purpose, mixed with the seed: stable across Rust versions,
    // unlike `std::hash`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in purpose.bytes().chain(seed.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&h.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// `len` standard normal draws scaled by `std`.
pub fn normal_vec(rng: &mut ChaCha8Rng, len: usize, std: f64) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            z * std
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn purposes_give_independent_streams() {
        let a: u64 = seeded_rng(1, "a").random();
        let b: u64 = seeded_rng(1, "b").random();
        let a2: u64 = seeded_rng(1, "a").random();
        assert_eq!(a, a2);
        assert_ne!(a, b);
    }

    #[test]
    fn normals_have_the_right_moments() {
        let v = normal_vec(&mut seeded_rng(3, "n"), 200_000, 2.0);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        // Standard errors: 2/sqrt(2e5) = 0.0045 for the mean, 4*sqrt(2/2e5) = 0.013 for var.
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 4.0).abs() < 0.06, "{var}");
    }
}
