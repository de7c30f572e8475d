//! Endpoints: where a peer binds or connects.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// An address to bind or connect to: `tcp://HOST:PORT` or `unix:///PATH`.
///
/// ```
/// use duplex::Endpoint;
/// let e: Endpoint = "tcp://127.0.0.1:7000".parse().unwrap();
/// assert_eq!(e.to_string(), "tcp://127.0.0.1:7000");
/// let u: Endpoint = "unix:///tmp/duplex.sock".parse().unwrap();
/// assert!(matches!(u, Endpoint::Unix(_)));
/// assert!("http://x".parse::<Endpoint>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A TCP host (name or address) and port.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port; 0 when binding picks a free one.
        port: u16,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
}

/// An endpoint string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint {input:?}: {why} (expected tcp://HOST:PORT or unix:///PATH)")]
pub struct EndpointError {
    input: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| EndpointError {
            input: s.to_owned(),
            why,
        };
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                return Err(err("missing host"));
            }
            let port = port
                .parse()
                .map_err(|_| err("port is not a number 0-65535"))?;
            Ok(Endpoint::Tcp {
                host: host.to_owned(),
                port,
            })
        } else if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(err("missing path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl TryFrom<&str> for Endpoint {
    type Error = EndpointError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<String> for Endpoint {
    type Error = EndpointError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<&String> for Endpoint {
    type Error = EndpointError;
    fn try_from(s: &String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(e: &Endpoint) -> Self {
        e.clone()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for s in ["tcp://localhost:1", "tcp://[::1]:7000", "unix:///a/b"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        for s in ["tcp://:1", "tcp://h", "tcp://h:99999", "unix://", "x"] {
            assert!(s.parse::<Endpoint>().is_err(), "{s}");
        }
    }
}
