//! The order-preserving string encoding of a [`Checkpoint`] (`sequence_key`).

use kc_checkpoint::{Checkpoint, SequenceNumber};

/// Digits of a `u64` sub-sequence number at most (`18446744073709551615`).
const SUB_DIGITS: usize = 20;

/// The `sequence_key` attribute of `checkpoint`: a string whose byte order is [`Checkpoint`]'s order.
///
/// `At` is the sequence number left-padded with zeros to [`SequenceNumber::MAX_DIGITS`] (129) digits, `#`, then the
/// sub-sequence number left-padded to 20 digits, or `z` for a whole record (after every sub-record of it, since
/// `z` sorts after digits). `ShardEnd` is `~`, which sorts after every digit, so after every `At`.
pub fn sequence_key(checkpoint: &Checkpoint) -> String {
    match checkpoint {
        Checkpoint::ShardEnd => "~".to_owned(),
        Checkpoint::At { sequence, sub_sequence } => {
            let width = SequenceNumber::MAX_DIGITS;
            let mut key = String::with_capacity(width + 1 + SUB_DIGITS);
            key.push_str(&format!("{:0>width$}#", sequence.as_str()));
            match sub_sequence {
                Some(sub) => key.push_str(&format!("{sub:0>SUB_DIGITS$}")),
                None => key.push('z'),
            }
            key
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).expect("valid sequence number")
    }

    #[test]
    fn encoding_order_is_checkpoint_order() {
        let real = "49590338271490256608559692538361571095921575989136588898";
        let real_next = "49590338271490256608559692538361571095921575989136588899";
        let longer = format!("{real}0"); // 57 digits
        let max = "9".repeat(SequenceNumber::MAX_DIGITS);
        let cases = [
            Checkpoint::at(seq("0")),
            Checkpoint::at_sub(seq("9"), 0),
            Checkpoint::at_sub(seq("9"), 9),
            Checkpoint::at_sub(seq("9"), 10),
            Checkpoint::at_sub(seq("9"), u64::MAX),
            Checkpoint::at(seq("9")),
            Checkpoint::at(seq("10")),
            Checkpoint::at_sub(seq("11"), 1),
            Checkpoint::at(seq("100")),
            Checkpoint::at_sub(seq(real), 2),
            Checkpoint::at(seq(real)),
            Checkpoint::at(seq(real_next)),
            Checkpoint::at(seq(&longer)),
            Checkpoint::at_sub(seq(&max), 0),
            Checkpoint::at(seq(&max)),
            Checkpoint::ShardEnd,
        ];
        for a in &cases {
            for b in &cases {
                assert_eq!(sequence_key(a).cmp(&sequence_key(b)), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn encoding_shape() {
        let key = sequence_key(&Checkpoint::at_sub(seq("0042"), 7));
        assert_eq!(key.len(), SequenceNumber::MAX_DIGITS + 1 + SUB_DIGITS);
        assert!(key.ends_with("00000000000000000042#00000000000000000007"), "{key}");
        assert!(sequence_key(&Checkpoint::at(seq("1"))).ends_with("0001#z"));
        assert_eq!(sequence_key(&Checkpoint::ShardEnd), "~");
    }

    #[test]
    fn pseudo_random_pairs_agree() {
        // A deterministic generator: no dependency, reproducible failures.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let arb = |next: &mut dyn FnMut() -> u64| -> Checkpoint {
            let r = next();
            if r.is_multiple_of(17) {
                return Checkpoint::ShardEnd;
            }
            let len = (next() % 60) as usize + 1;
            let digits: String = (0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect();
            let sub = if r.is_multiple_of(3) { None } else { Some(next() % 5) };
            Checkpoint::At { sequence: seq(&digits), sub_sequence: sub }
        };
        for _ in 0..5000 {
            let a = arb(&mut next);
            let b = arb(&mut next);
            assert_eq!(sequence_key(&a).cmp(&sequence_key(&b)), a.cmp(&b), "{a:?} vs {b:?}");
        }
    }
}
