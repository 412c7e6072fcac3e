//! The seeded order in which a run visits its units (examples, or online prompts).

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The seeded order in which examples (or, online, prompts) are visited: a fresh shuffle per epoch.
pub struct Order {
    n: usize,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
    pos: usize,
    consumed: usize,
}
impl Order {
    /// The order of `n` units from `seed`: epoch `e` is the permutation of ChaCha8 seeded
    /// `seed + e`.
    pub fn new(n: usize, seed: u64) -> Self {
        Self { n, seed, epoch: 0, perm: Vec::new(), pos: n, consumed: 0 }
    }

    /// The next `size` units (fewer at the end of an epoch; the next call starts a new one).
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        if self.pos >= self.n {
            if !self.perm.is_empty() {
                self.epoch += 1;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(self.epoch as u64));
            self.perm = (0..self.n).collect();
            self.perm.shuffle(&mut rng);
            self.pos = 0;
        }
        let end = (self.pos + size).min(self.n);
        let b = self.perm[self.pos..end].to_vec();
        self.pos = end;
        self.consumed += b.len();
        b
    }

    /// The units of one optimiser step: `batches` batches of `batch` units.
    pub fn next_step(&mut self, batch: usize, batches: usize) -> Vec<usize> {
        let mut idx = Vec::with_capacity(batch * batches);
        for _ in 0..batches {
            idx.extend(self.next_batch(batch));
        }
        idx
    }

    /// The examples of the first `count` visits (batches of `batch`), each once, ascending.
    pub fn visited(mut self, count: usize, batch: usize) -> Vec<usize> {
        let mut seen = vec![false; self.n];
        let mut left = count;
        while left > 0 && seen.iter().any(|s| !s) {
            let b = self.next_batch(batch.min(left).max(1));
            left = left.saturating_sub(b.len());
            b.into_iter().for_each(|i| seen[i] = true);
        }
        (0..self.n).filter(|&i| seen[i]).collect()
    }

    /// Epochs completed, fractional.
    pub fn epoch(&self) -> f64 {
        self.consumed as f64 / self.n as f64
    }
}
