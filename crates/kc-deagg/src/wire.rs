//! The few pieces of the protobuf wire format kc-deagg needs, read and written by hand.
//!
//! Every offset here is an offset into the whole input (the Kinesis record's data, magic number included), so that a
//! [`Span`] the reader returns can be turned into a zero-copy [`bytes::Bytes`] slice of the input, and an error can say
//! where it happened.

use crate::error::{DecodeError, Detail};

pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const START_GROUP: u8 = 3;
pub(crate) const END_GROUP: u8 = 4;
pub(crate) const FIXED32: u8 = 5;

/// The largest field number protobuf allows.
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// A range of the input, by offsets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start..self.end
    }

    pub(crate) fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// Reads the fields of one message, `buf[pos..]`: `buf` is the input cut off where the message ends.
///
/// It never reads past the end of `buf`, never indexes out of bounds and never allocates; a length read from the
/// input is checked against the bytes that are left before anything uses it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The name of the message being read, for errors.
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of the message at `span` of `input`.
    pub(crate) fn new(input: &'a [u8], span: Span, message: &'static str) -> Self {
        Self { buf: input.get(..span.end).unwrap_or_default(), pos: span.start, message }
    }

    /// The offset of the next byte to read.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The name of the message being read.
    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    /// Whether the whole message was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// How many bytes of the message are left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn past_end(&self, offset: usize) -> DecodeError {
        DecodeError::new(Detail::PastEnd { offset, message: self.message })
    }

    /// Skips `byte` if it is the next byte.
    #[inline]
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        let next = self.buf.get(self.pos) == Some(&byte);
        if next {
            self.pos += 1;
        }
        next
    }

    /// Reads a varint; one that runs past the end of the message is `Truncated`, one longer than 64 bits
    /// `InvalidProtobuf`. Like protobuf itself, it accepts varints padded with `0x80` bytes, up to 10 bytes.
    #[inline]
    pub(crate) fn read_varint(&mut self) -> Result<u64, DecodeError> {
        // Most varints of an aggregate (indexes, lengths under 128) are one byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        self.read_varint_slow()
    }

    #[inline(never)]
    fn read_varint_slow(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(DecodeError::new(Detail::VarintPastEnd { offset: start, message: self.message }));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(DecodeError::new(Detail::VarintTooLong { offset: start }));
            }
            value |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads a field key: (field number, wire type).
    #[inline]
    pub(crate) fn read_key(&mut self) -> Result<(u32, u8), DecodeError> {
        // Every key of the KPL's messages is one byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if (0x08..0x80).contains(&byte) {
                self.pos += 1;
                return Ok((u32::from(byte >> 3), byte & 7));
            }
        }
        let offset = self.pos;
        let key = self.read_varint()?;
        let field = key >> 3;
        match u32::try_from(field) {
            Ok(field) if field != 0 && u64::from(field) <= MAX_FIELD_NUMBER => Ok((field, (key & 7) as u8)),
            _ => Err(DecodeError::new(Detail::InvalidKey { offset, key })),
        }
    }

    /// Reads the length of a length-delimited field and returns where its bytes are; `offset` is where the field's
    /// key was. A length past the end of the message is `Truncated`, whatever its size.
    #[inline]
    pub(crate) fn read_len(&mut self, offset: usize) -> Result<Span, DecodeError> {
        let len = self.read_varint()?;
        let start = self.pos;
        match usize::try_from(len) {
            Ok(len) if len <= self.remaining() => {
                self.pos = start + len;
                Ok(Span { start, end: self.pos })
            }
            _ => Err(self.past_end(offset)),
        }
    }

    /// Reads a length-delimited field as an embedded message named `message`.
    pub(crate) fn read_message(&mut self, offset: usize, message: &'static str) -> Result<Reader<'a>, DecodeError> {
        let span = self.read_len(offset)?;
        Ok(Reader { buf: self.buf.get(..span.end).unwrap_or_default(), pos: span.start, message })
    }

    fn advance(&mut self, n: usize, offset: usize) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(self.past_end(offset));
        }
        self.pos += n;
        Ok(())
    }

    /// Skips the value of a field this decoder does not know, whose key (at `offset`) had `wire_type`.
    pub(crate) fn skip(&mut self, wire_type: u8, offset: usize) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => self.read_varint().map(drop),
            FIXED64 => self.advance(8, offset),
            LEN => self.read_len(offset).map(drop),
            FIXED32 => self.advance(4, offset),
            START_GROUP | END_GROUP => Err(DecodeError::new(Detail::Group { offset })),
            _ => Err(DecodeError::new(Detail::InvalidWireType { offset, wire_type })),
        }
    }

    /// The error for a known field with the wrong wire type.
    pub(crate) fn wrong_wire_type(&self, offset: usize, field: &'static str, wire_type: u8) -> DecodeError {
        DecodeError::new(Detail::WrongWireType { offset, message: self.message, field, wire_type })
    }

    /// Reads every field of the message at wire level (without looking into embedded messages) and returns the
    /// offset of the field that runs past the end of the message, if one does. Stops at anything invalid.
    pub(crate) fn find_cut_field(mut self) -> Option<usize> {
        while !self.is_empty() {
            let offset = self.pos;
            let result = self.read_key().and_then(|(_, wire_type)| self.skip(wire_type, offset));
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == crate::DecodeErrorKind::Truncated => return Some(offset),
                Err(_) => return None,
            }
        }
        None
    }
}

/// The key of field `field` with `wire_type`, for the fields of the KPL's messages (field numbers 1 to 15, one byte).
pub(crate) const fn key(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

/// How many bytes the varint of `value` takes.
pub(crate) const fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends the varint of `value`.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// How many bytes a length-delimited field with a one-byte key and `len` bytes of content takes.
pub(crate) const fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends a length-delimited field with a one-byte key.
pub(crate) fn put_len_field(buf: &mut Vec<u8>, field: u8, content: &[u8]) {
    buf.push(key(field, LEN));
    put_varint(buf, content.len() as u64);
    buf.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecodeErrorKind;

    /// A varint read: (value, bytes read), or the error kind.
    type VarintRead = Result<(u64, usize), DecodeErrorKind>;
    /// A key read: (field number, wire type), or the error kind.
    type KeyRead = Result<(u32, u8), DecodeErrorKind>;

    fn read_varint(bytes: &[u8]) -> VarintRead {
        let mut r = Reader::new(bytes, Span { start: 0, end: bytes.len() }, "test");
        r.read_varint().map(|v| (v, r.pos())).map_err(|e| e.kind())
    }

    #[test]
    fn varints() {
        use DecodeErrorKind::*;
        // (bytes, value and bytes read, or error)
        let cases: &[(&[u8], VarintRead)] = &[
            (&[0x00], Ok((0, 1))),
            (&[0x01, 0xFF], Ok((1, 1))),
            (&[0x7F], Ok((127, 1))),
            (&[0x80, 0x01], Ok((128, 2))),
            (&[0xAC, 0x02], Ok((300, 2))),
            (&[0x80, 0x00], Ok((0, 2))),
            (&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F], Ok((u64::from(u32::MAX), 5))),
            (&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Ok((u64::MAX, 10))),
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], Ok((0, 10))),
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], Ok((1 << 63, 10))),
            (&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02], Err(InvalidProtobuf)),
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], Err(InvalidProtobuf)),
            (&[], Err(Truncated)),
            (&[0x80], Err(Truncated)),
            (&[0xFF, 0xFF, 0xFF], Err(Truncated)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(read_varint(bytes), *expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn varint_round_trip_and_len() {
        let values = [0, 1, 127, 128, 255, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX >> 1, u64::MAX];
        for value in values {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&buf), Ok((value, buf.len())), "{value}");
        }
    }

    #[test]
    fn keys() {
        use DecodeErrorKind::*;
        let cases: &[(&[u8], KeyRead)] = &[
            (&[0x08], Ok((1, VARINT))),
            (&[0x1A], Ok((3, LEN))),
            (&[0x7D], Ok((15, FIXED32))),
            (&[0x80, 0x01], Ok((16, VARINT))),
            (&[0xF8, 0xFF, 0xFF, 0xFF, 0x0F], Ok(((1 << 29) - 1, VARINT))),
            (&[0x00], Err(InvalidProtobuf)),
            (&[0x02], Err(InvalidProtobuf)),
            (&[0x80, 0x00], Err(InvalidProtobuf)),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], Err(InvalidProtobuf)),
            (&[0x88], Err(Truncated)),
        ];
        for (bytes, expected) in cases {
            let mut r = Reader::new(bytes, Span { start: 0, end: bytes.len() }, "test");
            assert_eq!(r.read_key().map_err(|e| e.kind()), *expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn lengths_are_checked_before_use() {
        // A length of 2^64 - 1 and one of 5 with 2 bytes left: both run past the end, neither allocates.
        for bytes in [&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00][..], &[0x05, 0x00, 0x00]] {
            let mut r = Reader::new(bytes, Span { start: 0, end: bytes.len() }, "test");
            assert_eq!(r.read_len(0).map_err(|e| e.kind()), Err(DecodeErrorKind::Truncated));
        }
        let bytes = [0x02, 0xAA, 0xBB, 0xCC];
        let mut r = Reader::new(&bytes, Span { start: 0, end: bytes.len() }, "test");
        assert_eq!(r.read_len(0), Ok(Span { start: 1, end: 3 }));
    }
}
