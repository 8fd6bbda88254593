//! Decoding helpers shared by the formats: a little-endian cursor for the
//! binary ones, strict JSON for the others.

use serde::de::DeserializeOwned;

use crate::FormatError;

/// Decodes JSON strictly: trailing bytes and unknown fields are errors.
pub(crate) fn json_decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, FormatError> {
    serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid { what, reason: e.to_string() })
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.buf.len() < n {
            return Err(FormatError::Truncated { needed: n - self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn magic(&mut self, magic: &[u8; 4], expected: &'static str) -> Result<(), FormatError> {
        if &self.array::<4>()? != magic {
            return Err(FormatError::BadMagic { expected });
        }
        Ok(())
    }

    /// A count of fixed-size records, checked against what is left so a
    /// hostile count cannot make the caller allocate.
    pub(crate) fn count(&mut self, record_len: usize) -> Result<usize, FormatError> {
        let n = self.u64()?;
        let have = (self.buf.len() / record_len) as u64;
        if n > have {
            return Err(FormatError::Truncated { needed: ((n - have) as usize).saturating_mul(record_len) });
        }
        Ok(n as usize)
    }

    pub(crate) fn finish(self) -> Result<(), FormatError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FormatError::TrailingBytes(n)),
        }
    }
}
