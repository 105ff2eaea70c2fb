//! Seeds for the model's random draws (random base weights, LoRA init, benchmark ids):
//! one run seed and a stable label per draw, so each draw is reproducible on its own.
//! Its own module because both `weights` and `lora` draw, and neither owns the other.

/// A 32-byte ChaCha seed from the run seed and a stable label.
pub fn derive_seed(seed: u64, label: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    *h.finalize().as_bytes()
}
