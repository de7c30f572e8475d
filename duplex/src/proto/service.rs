//! Service names.

use std::fmt;

/// Longest service name accepted, in bytes.
pub(crate) const MAX_SERVICE_LEN: usize = 255;

/// A validated service name: 1 to 255 bytes of ASCII letters, digits and
/// `- . _ / + ~`. Names beginning with `@` are reserved for the protocol.
///
/// The same rules make the name usable as the host part of a stock SSH
/// client's forwarding request (`ssh -W SERVICE:1`).
///
/// ```
/// use duplex::ServiceName;
/// assert!(ServiceName::new("Calc.Add").is_ok());
/// assert!(ServiceName::new("has space").is_err());
/// assert!(ServiceName::new("@reserved").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

/// Why a service name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {name:?}: {why}")]
pub struct ServiceNameError {
    name: String,
    why: &'static str,
}

impl ServiceName {
    /// Validates a user-chosen service name.
    pub fn new(name: impl Into<String>) -> Result<Self, ServiceNameError> {
        let name = name.into();
        if name.starts_with('@') {
            return Err(ServiceNameError {
                name,
                why: "names beginning with '@' are reserved for the protocol",
            });
        }
        Self::new_any(name)
    }

    /// Validates a name that may be reserved (`@...`): used for names read
    /// from the wire and for the protocol's own channels.
    pub(crate) fn new_any(name: impl Into<String>) -> Result<Self, ServiceNameError> {
        let name = name.into();
        let why = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_SERVICE_LEN {
            Some("it is longer than 255 bytes")
        } else if !name
            .bytes()
            .enumerate()
            .all(|(i, b)| is_service_byte(b) || (i == 0 && b == b'@'))
        {
            Some("only ASCII letters, digits and - . _ / + ~ are allowed")
        } else {
            None
        };
        match why {
            Some(why) => Err(ServiceNameError {
                name: name.chars().take(64).collect(),
                why,
            }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the protocol's own names (`@...`).
    pub(crate) fn is_reserved(&self) -> bool {
        self.0.starts_with('@')
    }
}

fn is_service_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/' | b'+' | b'~')
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ServiceName {
    type Error = ServiceNameError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ServiceNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(ServiceName::new("echo").is_ok());
        assert!(ServiceName::new("a/b+c~d_e-f.g").is_ok());
        assert!(ServiceName::new("").is_err());
        assert!(ServiceName::new("a:b").is_err());
        assert!(ServiceName::new("a@b").is_err());
        assert!(ServiceName::new("x".repeat(256)).is_err());
        assert!(ServiceName::new("x".repeat(255)).is_ok());
        assert!(ServiceName::new("@hello").is_err());
        assert!(ServiceName::new_any("@hello").is_ok_and(|s| s.is_reserved()));
        assert!(ServiceName::new_any("@@").is_err());
    }
}
