//! The error of a configuration setter.

/// A configuration value out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config value for {name}: {why}")]
pub struct ConfigError {
    name: &'static str,
    why: String,
}

impl ConfigError {
    pub(crate) fn new(name: &'static str, why: impl Into<String>) -> Self {
        Self {
            name,
            why: why.into(),
        }
    }
}
