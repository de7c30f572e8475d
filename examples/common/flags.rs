//! Flags and peer setup shared by the examples: key, trust and name, with a
//! demo key pair under `./.duplex-demo/` when no key or trust flag is given.
//! A binary that includes it includes `usage.rs` too.

use std::path::PathBuf;

use anyhow::Context;
use duplex::{AuthorizedKeys, Identity, KnownHosts, Peer, PublicKey};

use crate::usage::{help, is_help, usage_error};

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

/// Parses the flags common to the examples (and collects the positional
/// arguments). `--help` and a bad flag come back as the errors of
/// `usage.rs`.
pub(crate) fn parse_flags(args: impl Iterator<Item = String>) -> anyhow::Result<Flags> {
    let mut f = Flags::default();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| usage_error(format!("{flag} needs a value")))
        };
        match a.as_str() {
            "--key" => f.key = Some(value("--key")?.into()),
            "--authorized-keys" => f.authorized_keys = Some(value("--authorized-keys")?.into()),
            "--known-hosts" => f.known_hosts = Some(value("--known-hosts")?.into()),
            "--trust-key" => f.trust_keys.push(value("--trust-key")?.into()),
            "--name" => f.name = Some(value("--name")?),
            "--backend" => f.backends.push(value("--backend")?),
            s if is_help(s) => return Err(help()),
            // Only `--` starts a flag (and `-h`): a number may be negative.
            s if s.starts_with("--") => return Err(usage_error(format!("unknown flag {s}"))),
            _ => f.positional.push(a),
        }
    }
    Ok(f)
}

/// An example's own flags, each with a value (`--poll ENDPOINT`), as
/// [`parse_flags_with`] found them.
#[allow(dead_code)] // not every example has flags of its own
pub(crate) struct Own(Vec<(&'static str, String)>);

#[allow(dead_code)]
impl Own {
    /// The value of `flag`, if given (the last one, if given twice).
    pub(crate) fn get(&self, flag: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `flag`, or a usage error saying it is missing (`what`
    /// names its value: `--dir DIR`).
    pub(crate) fn need(&self, flag: &str, what: &str) -> anyhow::Result<&str> {
        self.get(flag)
            .ok_or_else(|| usage_error(format!("give {flag} {what}")))
    }
}

/// [`parse_flags`], plus `own`: flags of the example's own that take a
/// value, returned apart.
#[allow(dead_code)] // not every example has flags of its own
pub(crate) fn parse_flags_with(
    mut args: impl Iterator<Item = String>,
    own: &[&'static str],
) -> anyhow::Result<(Flags, Own)> {
    let mut found = Vec::new();
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        let Some(flag) = own.iter().find(|f| **f == a) else {
            rest.push(a);
            continue;
        };
        match args.next() {
            Some(v) if is_help(&v) => return Err(help()),
            Some(v) => found.push((*flag, v)),
            None => return Err(usage_error(format!("{a} needs a value"))),
        }
    }
    Ok((parse_flags(rest.into_iter())?, Own(found)))
}

/// Builds the peer from the flags: identity, trust in both directions.
pub(crate) fn build_peer(f: &Flags, default_name: &str) -> anyhow::Result<Peer> {
    build_peer_with(f, default_name, duplex::Config::default())
}

/// [`build_peer`] with a configuration.
pub(crate) fn build_peer_with(
    f: &Flags,
    default_name: &str,
    config: duplex::Config,
) -> anyhow::Result<Peer> {
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
        // `duplex-name=NAME` tokens in the file's comment bind names to
        // the key, both ways.
        let names = k
            .bound_names()
            .with_context(|| format!("{}: in the key's comment", p.display()))?;
        if names.is_empty() {
            authorized.add(k.clone());
            known.pin(k);
        } else {
            for n in &names {
                authorized.add_named(k.clone(), n);
                known.pin_named(k.clone(), n);
            }
        }
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
        .config(config)
        .build()?)
}
