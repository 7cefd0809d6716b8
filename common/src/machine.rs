//! A machine's stable identity ([`MachineId`]), said by its agent beside
//! its host name: /etc/machine-id, or what the operator configured.
//!
//! Host names repeat across a fleet (many hosts keep the default
//! `localhost.localdomain`); a machine id does not. The collector lets one
//! machine hold a host name at a time: the same machine reconnecting
//! replaces its old stream, another machine claiming the name is refused.
//! The id is checked the same way where it is configured (the agent) and
//! where it arrives (the collector's edge).

use std::fmt;

/// Longest machine id, bytes. /etc/machine-id is 32 hex digits; this leaves
/// room for a UUID or a configuration system's own id.
pub const MAX_MACHINE_ID: usize = 128;

/// A machine id: 1 to [`MAX_MACHINE_ID`] printable ASCII characters, no
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId(String);

/// Why a string is not a machine id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineIdError {
    #[error("empty")]
    Empty,
    #[error("{len} bytes, more than {MAX_MACHINE_ID}")]
    TooLong { len: usize },
    #[error("{0:?} is not printable ASCII without spaces")]
    NotPrintable(String),
}

impl MachineId {
    /// `s` as a machine id, as it is (callers trim what they read from a
    /// file).
    pub fn new(s: &str) -> Result<MachineId, MachineIdError> {
        if s.is_empty() {
            return Err(MachineIdError::Empty);
        }
        if s.len() > MAX_MACHINE_ID {
            return Err(MachineIdError::TooLong { len: s.len() });
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(MachineIdError::NotPrintable(s.escape_debug().to_string()));
        }
        Ok(MachineId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

/// The machine id in the text of a machine-id file: its first line,
/// trimmed. `Ok(None)` when the file holds nothing (a freshly installed
/// image whose id is made at first boot).
pub fn from_file_text(text: &str) -> Result<Option<MachineId>, MachineIdError> {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    MachineId::new(line).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_systemd_machine_id_is_one() {
        let id = MachineId::new("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(id.as_str(), "0123456789abcdef0123456789abcdef");
        assert_eq!(id.to_string(), id.as_str());
        assert!(
            MachineId::new("web-17.rack4/A").is_ok(),
            "any graphic ASCII"
        );
        assert!(MachineId::new(&"x".repeat(MAX_MACHINE_ID)).is_ok());
    }

    #[test]
    fn bad_ids_are_refused_with_why() {
        assert_eq!(MachineId::new(""), Err(MachineIdError::Empty));
        assert_eq!(
            MachineId::new(&"x".repeat(MAX_MACHINE_ID + 1)),
            Err(MachineIdError::TooLong {
                len: MAX_MACHINE_ID + 1
            })
        );
        for bad in ["two words", "tab\there", "nul\0", "é", "line\n", " lead"] {
            let err = MachineId::new(bad).expect_err(bad);
            assert!(matches!(err, MachineIdError::NotPrintable(_)), "{bad:?}");
        }
        // The message shows the control character escaped, not raw.
        let err = MachineId::new("a\u{1b}[2J").expect_err("escape");
        assert!(err.to_string().contains("\\u{1b}"), "{err}");
    }

    #[test]
    fn a_file_gives_its_first_line_trimmed() {
        let id = from_file_text("0123456789abcdef0123456789abcdef\n").expect("valid");
        assert_eq!(
            id.as_ref().map(MachineId::as_str),
            Some("0123456789abcdef0123456789abcdef")
        );
        let id = from_file_text("  abc  \nsecond line\n").expect("valid");
        assert_eq!(id.as_ref().map(MachineId::as_str), Some("abc"));
        assert_eq!(from_file_text(""), Ok(None));
        assert_eq!(from_file_text("\n"), Ok(None));
        assert!(from_file_text("a b\n").is_err());
    }
}
