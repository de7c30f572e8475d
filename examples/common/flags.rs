//! Flags and peer setup shared by the examples: key, trust and name, with a
//! demo key pair under `./.duplex-demo/` when no key or trust flag is given.

use std::path::PathBuf;

use anyhow::{Context, bail};
use duplex::{AuthorizedKeys, Identity, KnownHosts, Peer, PublicKey};

/// Flags shared by the examples.
#[derive(Default)]
pub(crate) struct Flags {
    pub(crate) key: Option<PathBuf>,
    pub(crate) authorized_keys: Option<PathBuf>,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) trust_keys: Vec<PathBuf>,
    pub(crate) name: Option<String>,
    /// `--backend ENDPOINT` (repeatable; the gateway dials these).
    pub(crate) backends: Vec<String>,
    pub(crate) positional: Vec<String>,
}

/// Parses the flags common to the examples; `usage` is printed on `--help`.
pub(crate) fn parse_flags(
    args: impl Iterator<Item = String>,
    usage: &str,
) -> anyhow::Result<Flags> {
    let mut f = Flags::default();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--key" => f.key = Some(value("--key")?.into()),
            "--authorized-keys" => f.authorized_keys = Some(value("--authorized-keys")?.into()),
            "--known-hosts" => f.known_hosts = Some(value("--known-hosts")?.into()),
            "--trust-key" => f.trust_keys.push(value("--trust-key")?.into()),
            "--name" => f.name = Some(value("--name")?),
            "--backend" => f.backends.push(value("--backend")?),
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            s if s.starts_with("--") => bail!("unknown flag {s}\n{usage}"),
            _ => f.positional.push(a),
        }
    }
    Ok(f)
}

/// Builds the peer from the flags: identity, trust in both directions.
pub(crate) fn build_peer(f: &Flags, default_name: &str) -> anyhow::Result<Peer> {
    let key_path = f
        .key
        .clone()
        .unwrap_or_else(|| PathBuf::from(".duplex-demo/id_ed25519"));
    if f.key.is_none() {
        std::fs::create_dir_all(".duplex-demo").context("creating .duplex-demo")?;
    }
    let identity = if f.key.is_some() {
        Identity::load(&key_path)?
    } else {
        Identity::load_or_generate(&key_path)?
    };
    let mut authorized = match &f.authorized_keys {
        Some(p) => AuthorizedKeys::from_file(p)?,
        None => AuthorizedKeys::new(),
    };
    let mut known = match &f.known_hosts {
        Some(p) => KnownHosts::from_file(p)?,
        None => KnownHosts::new(),
    };
    for p in &f.trust_keys {
        let k = PublicKey::load(p)?;
        authorized.add(k.clone());
        known.pin(k);
    }
    if f.authorized_keys.is_none() && f.known_hosts.is_none() && f.trust_keys.is_empty() {
        // Demo mode: trust only our own key.
        authorized.add(identity.public_key());
        known.pin(identity.public_key());
    }
    Ok(Peer::builder()
        .name(f.name.clone().unwrap_or_else(|| default_name.to_owned()))
        .identity(identity)
        .authorized_keys(authorized)
        .known_hosts(known)
        .build()?)
}
