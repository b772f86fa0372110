//! The extension field.
//!
//! Every message the roadmap will extend (link handshake payloads, BEGIN, CONNECTED, EXTEND,
//! EXTENDED, the circuit handshake's client and server data) ends with an extension field:
//!
//! ```text
//! u8 count, then count × ( u8 type, u8 length, length bytes of data )
//! ```
//!
//! Rule: a receiver ignores extensions it does not understand, unless the type has its high bit
//! set (0x80–0xFF: "critical"), in which case it refuses the whole message.

use crate::reader::{DecodeError, Reader};

/// One extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub ty: u8,
    pub data: Vec<u8>,
}

/// A list of extensions, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extensions(pub Vec<Extension>);

impl Extensions {
    /// No extensions (encodes as a single zero byte).
    pub fn none() -> Self {
        Extensions(Vec::new())
    }

    /// Appends the encoding. Panics only on a caller bug (more than 255 extensions or an
    /// extension longer than 255 bytes), which no peer input can cause.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.0.len() <= 255, "too many extensions");
        out.push(self.0.len() as u8);
        for e in &self.0 {
            assert!(e.data.len() <= 255, "extension too long");
            out.push(e.ty);
            out.push(e.data.len() as u8);
            out.extend_from_slice(&e.data);
        }
    }

    /// Reads an extension field.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u8()?;
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let ty = r.u8()?;
            let len = r.u8()? as usize;
            v.push(Extension { ty, data: r.take(len)?.to_vec() });
        }
        Ok(Extensions(v))
    }

    /// Applies the rule: refuses the message if it carries a critical extension not in `known`.
    pub fn check_critical(&self, known: &[u8]) -> Result<(), DecodeError> {
        match self.0.iter().find(|e| e.ty & 0x80 != 0 && !known.contains(&e.ty)) {
            Some(e) => Err(DecodeError::UnknownCriticalExtension(e.ty)),
            None => Ok(()),
        }
    }

    /// Decodes the field and applies [`Self::check_critical`].
    pub fn decode_checked(r: &mut Reader<'_>, known: &[u8]) -> Result<Self, DecodeError> {
        let e = Self::decode(r)?;
        e.check_critical(known)?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ignored_critical_refused() {
        let e = Extensions(vec![Extension { ty: 0x05, data: vec![1, 2] }, Extension { ty: 0x81, data: vec![] }]);
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(buf, [2, 0x05, 2, 1, 2, 0x81, 0]);
        let d = Extensions::decode(&mut Reader::new(&buf)).unwrap();
        assert_eq!(d, e);
        assert_eq!(d.check_critical(&[]), Err(DecodeError::UnknownCriticalExtension(0x81)));
        assert!(d.check_critical(&[0x81]).is_ok());
        assert_eq!(Extensions::decode(&mut Reader::new(&[1, 5, 3, 0])), Err(DecodeError::Truncated));
    }
}
