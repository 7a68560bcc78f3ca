//! Choosing the next token from the logits: repetition penalty, then greedy or a seeded draw after
//! temperature, top-k and top-p (in the order of Hugging Face transformers' logits warpers).

use std::collections::HashSet;

use rand_chacha::{
    ChaCha8Rng,
    rand_core::{Rng, SeedableRng},
};

use crate::params::{GenerationParams, Sampling};

/// One sequence's sampler: its parameters and its own random generator.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    repetition_penalty: f32,
    rng: ChaCha8Rng,
    seed: u64,
    /// Tokens seen so far (prompt and generated), for the repetition penalty.
    seen: HashSet<u32>,
}

impl Sampler {
    pub fn new(params: &GenerationParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(random_seed);
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Self {
            sampling: params.sampling,
            repetition_penalty: params.repetition_penalty,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            seen,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Picks the next token. `scratch` is reused between calls to avoid allocating.
    pub fn next(&mut self, logits: &[f32], scratch: &mut Vec<f32>) -> u32 {
        let logits = if self.repetition_penalty != 1.0 {
            scratch.clear();
            scratch.extend_from_slice(logits);
            for &t in &self.seen {
                if let Some(l) = scratch.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / self.repetition_penalty
                    } else {
                        *l * self.repetition_penalty
                    };
                }
            }
            &scratch[..]
        } else {
            logits
        };
        let token = match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
            } => {
                let u = uniform(&mut self.rng);
                draw(logits, temperature, top_k as usize, top_p, u)
            }
        };
        if self.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        token
    }
}

/// The index of the largest value; the first one on a tie (as `numpy.argmax`). NaN is never
/// the largest.
pub fn argmax(values: &[f32]) -> u32 {
    // Two passes, each a loop of selects and compares without branches, so both vectorize
    // (this runs once per generated token, over the whole vocabulary): the maximum, lane-wise,
    // then the first chunk that holds it. Cheaper than tracking indices in the first pass.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for j in 0..LANES {
            // `>` is false for NaN, which never replaces the maximum.
            lanes[j] = if chunk[j] > lanes[j] {
                chunk[j]
            } else {
                lanes[j]
            };
        }
    }
    let max = lanes
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    let chunk = values
        .chunks(LANES)
        .position(|c| c.iter().fold(false, |found, &v| found | (v == max)))
        .unwrap_or(0);
    let first = values[chunk * LANES..]
        .iter()
        .position(|&v| v == max)
        .map_or(0, |i| chunk * LANES + i);
    first as u32
}

/// A draw with `u` in [0, 1) from softmax(logits / temperature), restricted to the `top_k` most
/// likely tokens (0: all) and then to the smallest most-likely set of mass `top_p`.
fn draw(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, u: f64) -> u32 {
    let inv_t = 1.0 / temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| (((l - max) * inv_t) as f64).exp();
    let restricted = (top_k > 0 && top_k < logits.len()) || top_p < 1.0;
    if !restricted {
        let total: f64 = logits.iter().map(|&l| weight(l)).sum();
        let target = u * total;
        let mut acc = 0.0;
        for (i, &l) in logits.iter().enumerate() {
            acc += weight(l);
            if acc > target {
                return i as u32;
            }
        }
        return argmax(logits);
    }
    // Candidates, most likely first (ties by index).
    let mut candidates: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (l, i as u32))
        .collect();
    let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if top_k > 0 && top_k < candidates.len() {
        candidates.select_nth_unstable_by(top_k - 1, by_logit);
        candidates.truncate(top_k);
    }
    candidates.sort_unstable_by(by_logit);
    let weights: Vec<f64> = candidates.iter().map(|&(l, _)| weight(l)).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let target = u * kept;
    let mut acc = 0.0;
    for (i, w) in weights[..keep].iter().enumerate() {
        acc += w;
        if acc > target {
            return candidates[i].1;
        }
    }
    candidates[keep - 1].1
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(sampling: Sampling, seed: u64) -> GenerationParams {
        GenerationParams {
            sampling,
            seed: Some(seed),
            ..GenerationParams::default()
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        let mut v = vec![0.0f32; 100];
        v[37] = 2.0;
        v[80] = 2.0;
        assert_eq!(argmax(&v), 37);
        v[5] = 2.0;
        assert_eq!(argmax(&v), 5);
        v[99] = 3.0;
        assert_eq!(argmax(&v), 99);
        assert_eq!(argmax(&[1.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN]), 1);
        // Against the obvious definition, on ties in every position of a lane pattern.
        for n in [1usize, 15, 16, 17, 33, 50257] {
            for k in 0..7u32 {
                let v: Vec<f32> = (0..n as u32)
                    .map(|i| ((i * 7919 + k) % 13) as f32)
                    .collect();
                let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let first = v.iter().position(|&x| x == max).unwrap_or(0) as u32;
                assert_eq!(argmax(&v), first, "n {n} k {k}");
            }
        }
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let best = argmax(&logits);
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(draw(&logits, 1.0, 1, 1.0, u), best);
            assert_eq!(draw(&logits, 1.0, 0, 1e-6, u), best);
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens with probabilities 0.25 and 0.75.
        let logits = [0.0f32, 3f32.ln()];
        assert_eq!(draw(&logits, 1.0, 0, 1.0, 0.2), 0);
        assert_eq!(draw(&logits, 1.0, 0, 1.0, 0.3), 1);
        // top_p 0.5 keeps only the likely one.
        assert_eq!(draw(&logits, 1.0, 0, 0.5, 0.1), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..500).map(|i| (i as f32 * 0.37).sin()).collect();
        let sampling = Sampling::Random {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
        };
        let run = |seed| {
            let mut s = Sampler::new(&params(sampling, seed), &[]);
            let mut scratch = Vec::new();
            (0..20)
                .map(|_| s.next(&logits, &mut scratch))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let logits = [1.0f32, 0.9, -0.5];
        let mut p = GenerationParams::greedy(4);
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(&p, &[0]);
        let mut scratch = Vec::new();
        // Token 0 is in the prompt: 1.0 / 2 < 0.9.
        assert_eq!(s.next(&logits, &mut scratch), 1);
        // Now 0 and 1 are seen: 0.5 > 0.45.
        assert_eq!(s.next(&logits, &mut scratch), 0);
    }
}
