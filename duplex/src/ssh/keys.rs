//! Identities (key pairs), public keys and fingerprints, in OpenSSH formats.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{Algorithm, HashAlg};

/// A key fingerprint as OpenSSH prints it: `SHA256:` and unpadded base64.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(Arc<str>);

impl Fingerprint {
    /// The fingerprint text, `SHA256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key (ed25519, ECDSA or RSA).
///
/// Two keys are equal when their key material is: the comment is ignored.
#[derive(Clone)]
pub struct PublicKey(pub(crate) ssh_key::PublicKey);

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key_data() == other.0.key_data()
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... comment`),
    /// as found in `id_ed25519.pub`.
    pub fn parse(line: &str) -> Result<Self, KeyError> {
        ssh_key::PublicKey::from_openssh(line.trim())
            .map(PublicKey)
            .map_err(|e| KeyError::Parse {
                path: None,
                why: e.to_string(),
            })
    }

    /// Reads a `.pub` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        Self::parse(&text).map_err(|e| e.with_path(path))
    }

    /// The key's SHA256 fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.0)
    }

    /// The OpenSSH one-line form (`ssh-ed25519 AAAA... comment`).
    pub fn to_openssh(&self) -> String {
        self.0
            .to_openssh()
            .unwrap_or_else(|_| format!("<unencodable {} key>", self.0.algorithm()))
    }

    /// The key's algorithm name, such as `ssh-ed25519`.
    pub fn algorithm(&self) -> String {
        self.0.algorithm().to_string()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.fingerprint())
    }
}

pub(crate) fn fingerprint(key: &ssh_key::PublicKey) -> Fingerprint {
    Fingerprint(key.fingerprint(HashAlg::Sha256).to_string().into())
}

/// A peer's key pair. Cheap to clone.
///
/// ```
/// let id = duplex::Identity::generate();
/// let dir = std::env::temp_dir().join(format!("duplex-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("id_ed25519");
/// id.save(&path).unwrap();
/// let again = duplex::Identity::load(&path).unwrap();
/// assert_eq!(again.fingerprint(), id.fingerprint());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone)]
pub struct Identity(pub(crate) Arc<ssh_key::PrivateKey>);

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// A new random ed25519 key pair.
    pub fn generate() -> Self {
        // The OS random source does not fail on supported platforms; ssh-key
        // only errors for algorithms it cannot generate, and ed25519 is not one.
        match ssh_key::PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519) {
            Ok(k) => Identity(Arc::new(k)),
            Err(e) => unreachable_key_error(e),
        }
    }

    /// Loads an unencrypted private key written by `ssh-keygen` (OpenSSH
    /// format; ed25519, ECDSA or RSA).
    ///
    /// On Unix the file must not be readable by group or others, as OpenSSH
    /// requires.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        Self::load_inner(path.as_ref(), None)
    }

    /// Loads a passphrase-protected private key.
    pub fn load_with_passphrase(
        path: impl AsRef<Path>,
        passphrase: &str,
    ) -> Result<Self, KeyError> {
        Self::load_inner(path.as_ref(), Some(passphrase))
    }

    fn load_inner(path: &Path, passphrase: Option<&str>) -> Result<Self, KeyError> {
        check_permissions(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        Self::from_openssh(&text, passphrase).map_err(|e| e.with_path(path))
    }

    /// Parses an OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub fn from_openssh(text: &str, passphrase: Option<&str>) -> Result<Self, KeyError> {
        let key = ssh_key::PrivateKey::from_openssh(text).map_err(|e| KeyError::Parse {
            path: None,
            why: e.to_string(),
        })?;
        let key = if key.is_encrypted() {
            let pass = passphrase.ok_or(KeyError::Encrypted { path: None })?;
            key.decrypt(pass)
                .map_err(|_| KeyError::BadPassphrase { path: None })?
        } else {
            key
        };
        Ok(Identity(Arc::new(key)))
    }

    /// Loads the key at `path`, or generates one and saves it there (and its
    /// public half at `path.pub`) if the file does not exist.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        if path.exists() {
            Self::load(path)
        } else {
            let id = Self::generate();
            id.save(path)?;
            Ok(id)
        }
    }

    /// Writes the private key in OpenSSH format (mode 0600 on Unix) and the
    /// public key next to it as `PATH.pub`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        let path = path.as_ref();
        let text = self
            .0
            .to_openssh(LineEnding::LF)
            .map_err(|e| KeyError::Parse {
                path: Some(path.to_owned()),
                why: e.to_string(),
            })?;
        write_private(path, text.as_bytes()).map_err(|e| KeyError::io(path, e))?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        let mut line = self.public_key().to_openssh();
        line.push('\n');
        std::fs::write(&pub_path, line).map_err(|e| KeyError::io(&pub_path, e))
    }

    /// The private key in OpenSSH format, for handing to a child process
    /// over a pipe (never written to a file here).
    pub(crate) fn to_openssh_private(&self) -> Result<String, KeyError> {
        self.0
            .to_openssh(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| KeyError::Parse {
                path: None,
                why: e.to_string(),
            })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key().clone())
    }

    /// The public key's SHA256 fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(self.0.public_key())
    }
}

#[allow(clippy::panic)] // documented invariant: ed25519 generation cannot fail
fn unreachable_key_error(e: ssh_key::Error) -> ! {
    panic!("ed25519 key generation failed: {e}")
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| KeyError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Errors loading, parsing or saving keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("cannot read or write key file {}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a key in a format we read.
    #[error("{}not an OpenSSH key: {why}", path_prefix(.path))]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What the parser said.
        why: String,
    },
    /// The key is passphrase-protected and no passphrase was given.
    #[error("{}the private key is encrypted: load it with a passphrase (Identity::load_with_passphrase)", path_prefix(.path))]
    Encrypted {
        /// The file, when read from one.
        path: Option<PathBuf>,
    },
    /// The passphrase does not decrypt the key.
    #[error("{}wrong passphrase for the private key", path_prefix(.path))]
    BadPassphrase {
        /// The file, when read from one.
        path: Option<PathBuf>,
    },
    /// A private key file readable by other users.
    #[error("private key file {} has mode {mode:04o}, readable by others: run `chmod 600 {}`", .path.display(), .path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn path_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl KeyError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        KeyError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn with_path(self, p: &Path) -> Self {
        let p = Some(p.to_owned());
        match self {
            KeyError::Parse { why, .. } => KeyError::Parse { path: p, why },
            KeyError::Encrypted { .. } => KeyError::Encrypted { path: p },
            KeyError::BadPassphrase { .. } => KeyError::BadPassphrase { path: p },
            other => other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let id = Identity::generate();
        let fp = id.fingerprint().to_string();
        assert!(fp.starts_with("SHA256:") && !fp.ends_with('='), "{fp}");
        let line = id.public_key().to_openssh();
        assert_eq!(PublicKey::parse(&line).unwrap(), id.public_key());
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            Identity::from_openssh("nope", None),
            Err(KeyError::Parse { .. })
        ));
        assert!(PublicKey::parse("ssh-ed25519 !!!").is_err());
    }
}
