//! Dense bit streams of fixed-width codes, the form `.cnnpack` files store b-bit codes
//! in: code `i` occupies bits `b·i .. b·i + b` of the stream, and bit `j` of the stream
//! is bit `j % 32` of u32 word `j / 32` (little-endian), so a code may straddle two
//! words and `n` codes take exactly `ceil(n·b / 32)` words. Bits past the last code are
//! 0.
//!
//! Why not the kernels' layout: kernels want codes that never straddle a word and rows
//! that start on a word (`floor(32 / b)` codes per word), which for b = 3 and 5 spends
//! 3.2 and 5.33 bits per weight, and for small rows (LeNet's 25-weight conv rows) pads
//! every row to a word. Files store the stream; loaders re-pack into the word layout.

/// Words holding `n` codes of `bits` bits.
pub fn words(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(32)
}

/// Packs `n` codes (each below `2^bits`; higher bits are dropped) into a stream.
/// `codes` must yield at least `n` items; later ones are ignored.
pub fn pack(codes: impl IntoIterator<Item = u32>, bits: u32, n: usize) -> Vec<u32> {
    let b = bits as usize;
    let mask = low_mask(bits);
    let mut out = vec![0u32; words(n, bits)];
    for (i, c) in codes.into_iter().take(n).enumerate() {
        let c = c & mask;
        let (w, s) = ((i * b) / 32, (i * b) % 32);
        out[w] |= c << s;
        if s + b > 32 {
            out[w + 1] |= c >> (32 - s);
        }
    }
    out
}

/// Code `i` of a stream of `bits`-bit codes. Panics if the stream is too short for it
/// (callers check the stream's length against its code count first).
pub fn get(stream: &[u32], bits: u32, i: usize) -> u32 {
    let b = bits as usize;
    let (w, s) = ((i * b) / 32, (i * b) % 32);
    let mut v = stream[w] >> s;
    if s + b > 32 {
        v |= stream[w + 1] << (32 - s);
    }
    v & low_mask(bits)
}

/// Whether every bit past the first `n` codes is 0 (a stream of exactly
/// `words(n, bits)` words is assumed).
pub fn padding_clear(stream: &[u32], bits: u32, n: usize) -> bool {
    let used = n * bits as usize;
    match stream.last() {
        Some(&last) if !used.is_multiple_of(32) => last >> (used % 32) == 0,
        _ => true,
    }
}

fn low_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    #[test]
    fn pack_then_get_is_exact_for_every_width_and_length() {
        let mut rng = Rng::new(5);
        for bits in 1..=8u32 {
            for n in [0usize, 1, 2, 7, 31, 32, 33, 65, 100, 1001] {
                let codes: Vec<u32> = (0..n)
                    .map(|_| rng.next_u64() as u32 & low_mask(bits))
                    .collect();
                let stream = pack(codes.iter().copied(), bits, n);
                assert_eq!(stream.len(), words(n, bits), "bits {bits} n {n}");
                let back: Vec<u32> = (0..n).map(|i| get(&stream, bits, i)).collect();
                assert_eq!(back, codes, "bits {bits} n {n}");
                assert!(padding_clear(&stream, bits, n), "bits {bits} n {n}");
            }
        }
    }

    #[test]
    fn codes_straddle_words_and_set_padding_is_seen() {
        // 3-bit codes: code 10 covers stream bits 30..33, i.e. two words.
        let codes: Vec<u32> = (0..11).map(|i| if i == 10 { 0b101 } else { 0 }).collect();
        let stream = pack(codes, 3, 11);
        assert_eq!(stream, vec![0b01 << 30, 0b1]);
        assert_eq!(get(&stream, 3, 10), 0b101);
        assert!(padding_clear(&stream, 3, 11));
        let mut bad = stream.clone();
        bad[1] |= 1 << 1; // bit 33: past the 11th code
        assert!(!padding_clear(&bad, 3, 11));
        // Exactly full words have no padding to check.
        assert!(padding_clear(&[u32::MAX], 4, 8));
    }
}
