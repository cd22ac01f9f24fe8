//! MD5 (RFC 1321), the digest that ends every KPL aggregate: most of the time `decode` takes.
//!
//! Written here rather than taken from the `md-5` crate because that crate's portable code leaves the step's
//! round-constant addition on the chain of dependent instructions: LLVM moves every constant to the end of a sum, so
//! each of the 64 steps waits on `F + a + m`, then `+ K`, then the rotation. Here the constants come from a table
//! the optimiser cannot see into ([`std::hint::black_box`] once per block), so `a + m + K` is computed while the
//! previous step runs and only `+ F`, the rotation and `+ b` wait on it; round 2's `G` is split into two disjoint
//! halves, `(c & !d) + (b & d)`, of which only the second waits on `b`. Measured by `cargo bench -p kc-deagg`: about
//! 1.3x the `md-5` crate's portable code on x86_64, on a par with OpenSSL's assembly. No `unsafe`, no assembly, no
//! C compiler. The tests hold it to RFC 1321's test suite and to the `md-5` crate over random inputs.

/// The table of round constants, `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321, section 3.4).
static K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// The MD5 digest of `data` (RFC 1321): the digest [`decode`](crate::decode) checks and the
/// [`Aggregator`](crate::Aggregator) writes.
///
/// ```
/// let hex: String = kc_deagg::md5(b"abc").iter().map(|b| format!("{b:02x}")).collect();
/// assert_eq!(hex, "900150983cd24fb0d6963f7d28e17f72");
/// ```
pub fn md5(data: &[u8]) -> [u8; 16] {
    let mut state = [0x6745_2301_u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        compress(&mut state, block);
    }
    // Padding: a 1 bit, zeros up to 56 bytes modulo 64, then the length in bits, little-endian.
    let rest = blocks.remainder();
    let mut tail = [0_u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let end = if rest.len() < 56 { 64 } else { 128 };
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[end - 8..end].copy_from_slice(&bits.to_le_bytes());
    for block in tail[..end].chunks_exact(64) {
        compress(&mut state, block);
    }
    let mut out = [0_u8; 16];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// One step: `a = b + ((a + m + k + f(b, c, d)) <<< s)`, with the sum ordered so that only `f`'s last operation
/// waits on `b`.
macro_rules! step {
    (F, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:literal) => {
        $a = $a.wrapping_add($m).wrapping_add($k).wrapping_add($d ^ ($b & ($c ^ $d))).rotate_left($s).wrapping_add($b)
    };
    (G, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:literal) => {
        // (b & d) | (c & !d): the halves share no bit, so | is +, and c & !d does not wait on b.
        $a = $a
            .wrapping_add($m)
            .wrapping_add($k)
            .wrapping_add($c & !$d)
            .wrapping_add($b & $d)
            .rotate_left($s)
            .wrapping_add($b)
    };
    (H, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:literal) => {
        $a = $a.wrapping_add($m).wrapping_add($k).wrapping_add($b ^ ($c ^ $d)).rotate_left($s).wrapping_add($b)
    };
    (I, $a:ident, $b:ident, $c:ident, $d:ident, $m:expr, $k:expr, $s:literal) => {
        $a = $a.wrapping_add($m).wrapping_add($k).wrapping_add($c ^ ($b | !$d)).rotate_left($s).wrapping_add($b)
    };
}

/// Four steps of one round, starting at step `$i`, over message words `$w0..$w3`, with the round's shifts.
macro_rules! four {
    ($f:ident, [$a:ident, $b:ident, $c:ident, $d:ident], $m:ident, $k:ident, $i:literal, [$w0:literal, $w1:literal, $w2:literal, $w3:literal], [$s0:literal, $s1:literal, $s2:literal, $s3:literal]) => {
        step!($f, $a, $b, $c, $d, $m[$w0], $k[$i], $s0);
        step!($f, $d, $a, $b, $c, $m[$w1], $k[$i + 1], $s1);
        step!($f, $c, $d, $a, $b, $m[$w2], $k[$i + 2], $s2);
        step!($f, $b, $c, $d, $a, $m[$w3], $k[$i + 3], $s3);
    };
}

/// Adds one 64-byte block to `state`.
#[inline(always)]
fn compress(state: &mut [u32; 4], block: &[u8]) {
    let mut m = [0_u32; 16];
    for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    // Opaque to the optimiser, so that it keeps each constant where the sum puts it (see the module's docs).
    let k = std::hint::black_box(&K);
    let [mut a, mut b, mut c, mut d] = *state;

    four!(F, [a, b, c, d], m, k, 0, [0, 1, 2, 3], [7, 12, 17, 22]);
    four!(F, [a, b, c, d], m, k, 4, [4, 5, 6, 7], [7, 12, 17, 22]);
    four!(F, [a, b, c, d], m, k, 8, [8, 9, 10, 11], [7, 12, 17, 22]);
    four!(F, [a, b, c, d], m, k, 12, [12, 13, 14, 15], [7, 12, 17, 22]);

    four!(G, [a, b, c, d], m, k, 16, [1, 6, 11, 0], [5, 9, 14, 20]);
    four!(G, [a, b, c, d], m, k, 20, [5, 10, 15, 4], [5, 9, 14, 20]);
    four!(G, [a, b, c, d], m, k, 24, [9, 14, 3, 8], [5, 9, 14, 20]);
    four!(G, [a, b, c, d], m, k, 28, [13, 2, 7, 12], [5, 9, 14, 20]);

    four!(H, [a, b, c, d], m, k, 32, [5, 8, 11, 14], [4, 11, 16, 23]);
    four!(H, [a, b, c, d], m, k, 36, [1, 4, 7, 10], [4, 11, 16, 23]);
    four!(H, [a, b, c, d], m, k, 40, [13, 0, 3, 6], [4, 11, 16, 23]);
    four!(H, [a, b, c, d], m, k, 44, [9, 12, 15, 2], [4, 11, 16, 23]);

    four!(I, [a, b, c, d], m, k, 48, [0, 7, 14, 5], [6, 10, 15, 21]);
    four!(I, [a, b, c, d], m, k, 52, [12, 3, 10, 1], [6, 10, 15, 21]);
    four!(I, [a, b, c, d], m, k, 56, [8, 15, 6, 13], [6, 10, 15, 21]);
    four!(I, [a, b, c, d], m, k, 60, [4, 11, 2, 9], [6, 10, 15, 21]);

    for (total, part) in state.iter_mut().zip([a, b, c, d]) {
        *total = total.wrapping_add(part);
    }
}

#[cfg(test)]
mod tests {
    use md5::{Digest, Md5};
    use proptest::prelude::*;

    use super::md5 as digest;

    fn hex(bytes: [u8; 16]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc_1321_test_suite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in suite {
            assert_eq!(hex(digest(input.as_bytes())), want, "MD5({input:?})");
        }
    }

    #[test]
    fn every_length_around_the_padding_boundaries() {
        let data: Vec<u8> = (0..300_u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..data.len() {
            let want: [u8; 16] = Md5::digest(&data[..len]).into();
            assert_eq!(digest(&data[..len]), want, "length {len}");
        }
    }

    proptest! {
        #[test]
        fn matches_the_md5_crate(data in proptest::collection::vec(any::<u8>(), 0..5_000)) {
            let want: [u8; 16] = Md5::digest(&data).into();
            prop_assert_eq!(digest(&data), want);
        }
    }
}
