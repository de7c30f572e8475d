#![allow(clippy::unwrap_used)]

use super::*;
use crate::Identity;
use base64::Engine;

#[test]
fn globbing() {
    assert!(glob(b"*.example.com", b"a.example.com"));
    assert!(!glob(b"*.example.com", b"example.com"));
    assert!(glob(b"h?st", b"host"));
    assert!(glob(b"*", b""));
    assert!(!glob(b"a", b""));
}

#[test]
fn known_hosts_rules() {
    let k1 = Identity::generate().public_key();
    let k2 = Identity::generate().public_key();
    let text = format!(
        "# c\n*.lan,!bad.lan {}\n[10.0.0.1]:7000 {}\n@revoked * {}\n",
        k1.to_openssh(),
        k1.to_openssh(),
        k2.to_openssh()
    );
    let kh = KnownHosts::parse(&text).unwrap();
    assert!(kh.check("a.lan", 22, &k1).is_ok());
    assert!(matches!(
        kh.check("bad.lan", 22, &k1),
        Err(HostKeyError::Unknown { .. })
    ));
    assert!(kh.check("10.0.0.1", 7000, &k1).is_ok());
    let err = kh.check("a.lan", 22, &Identity::generate().public_key());
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains(&k1.fingerprint().to_string()), "{msg}");
    assert!(matches!(
        kh.check("x", 22, &k2),
        Err(HostKeyError::Revoked { .. })
    ));
}

#[test]
fn hashed_hosts() {
    let k = Identity::generate().public_key();
    let salt = [7u8; 20];
    let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt)
        .unwrap()
        .chain_update(b"[127.0.0.1]:2222")
        .finalize()
        .into_bytes();
    let b64 = base64::engine::general_purpose::STANDARD;
    let line = format!(
        "|1|{}|{} {}",
        b64.encode(salt),
        b64.encode(mac),
        k.to_openssh()
    );
    let kh = KnownHosts::parse(&line).unwrap();
    assert!(kh.check("127.0.0.1", 2222, &k).is_ok());
    assert!(kh.check("127.0.0.1", 2223, &k).is_err());
}

#[test]
fn authorized_keys_with_options_and_comments() {
    let k = Identity::generate().public_key();
    let line = k.to_openssh();
    let text = format!(
        "{line} alice@laptop\nno-pty,command=\"echo a b\" {line} with spaces\nfrom=\"10.0.0.1\" {line}\n"
    );
    let ak = AuthorizedKeys::parse(&text).unwrap();
    assert_eq!(ak.entries().len(), 3);
    assert_eq!(ak.entries()[0].comment, "alice@laptop");
    assert_eq!(ak.entries()[1].options, "no-pty,command=\"echo a b\"");
    assert_eq!(ak.entries()[1].comment, "with spaces");
    assert!(ak.authorizes(&k));
    assert!(AuthorizedKeys::parse("garbage here").is_err());
}

#[test]
fn comment_name_tokens() {
    let ok = |c: &str| comment_names(c).unwrap();
    assert!(ok("").is_empty());
    assert!(ok("alice@laptop").is_empty());
    assert_eq!(ok("duplex-name=billing"), ["billing"]);
    assert_eq!(
        ok("  me@host\tduplex-name=a  DUPLEX-NAME=b duplex-name=a "),
        ["a", "b"]
    );
    assert_eq!(
        ok(r#"duplex-name="two words" duplex-name="q\"uote" x"#),
        ["two words", "q\"uote"]
    );
    // Only whole tokens count.
    assert!(ok("xduplex-name=a duplex-name duplex-names=b").is_empty());
    for (bad, why) in [
        ("duplex-name=", "it is empty"),
        ("a duplex-name=\"\" b", "it is empty"),
        ("duplex-name=\"open", "not closed"),
        ("duplex-name=\"a\"b", "after the closing quote"),
        ("duplex-name=\"bell\u{7}\"", "control character"),
    ] {
        let err = comment_names(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    let long = format!("duplex-name={}", "n".repeat(256));
    let err = comment_names(&long).unwrap_err();
    assert!(err.reason.contains("longer than 255 bytes"), "{err}");
    assert_eq!(ok(&format!("duplex-name={}", "n".repeat(255))).len(), 1);
}

#[test]
fn known_hosts_lines_bind_names() {
    let real = Identity::generate().public_key();
    let other = Identity::generate().public_key();
    let gone = Identity::generate().public_key();
    let text = format!(
        "[127.0.0.1]:7000 {} ops duplex-name=billing\n\
         other.lan {} duplex-name=\"pay roll\" duplex-name=billing-2\n\
         [127.0.0.1]:7001 {} duplex-name=other\n\
         @revoked * {} duplex-name=ghost\n",
        real.to_openssh(),
        real.to_openssh(),
        other.to_openssh(),
        gone.to_openssh(),
    );
    let kh = KnownHosts::parse(&text).unwrap();
    let (rfp, ofp) = (real.fingerprint(), other.fingerprint());
    // The key's names combine over its lines, whatever the host.
    for name in ["billing", "pay roll", "billing-2"] {
        assert!(kh.check_peer_name(&rfp, name).is_ok(), "{name}");
    }
    // A wrong name is refused, naming both.
    let err = kh.check_peer_name(&rfp, "other").unwrap_err();
    assert!(matches!(err, NameBindingError::NotItsName { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"other\"") && msg.contains("billing"),
        "{msg}"
    );
    assert!(kh.check_peer_name(&ofp, "other").is_ok());
    assert!(kh.check_peer_name(&ofp, "billing").is_err());
    // A bound name is its key's alone, even for a key with no names.
    let stranger = Identity::generate().public_key().fingerprint();
    assert!(matches!(
        kh.check_peer_name(&stranger, "billing"),
        Err(NameBindingError::TakenByAnother { .. })
    ));
    // Revoked lines bind nothing; unbound keys may use free names.
    assert!(kh.check_peer_name(&stranger, "ghost").is_ok());
    // The key check is unchanged by the comment.
    assert!(kh.check("127.0.0.1", 7000, &real).is_ok());
    assert!(kh.check("127.0.0.1", 7001, &real).is_err());

    // A token that breaks the peer-name rules: an error naming the line.
    let bad = format!("# c\nh {} duplex-name=\n", real.to_openssh());
    let msg = KnownHosts::parse(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("known_hosts line 2") && msg.contains("it is empty"),
        "{msg}"
    );
}

#[test]
fn pub_file_comment_binds_names_when_pinned() {
    let real = Identity::generate().public_key();
    let line = format!("{} srv@host duplex-name=real", real.to_openssh());
    let key = PublicKey::parse(&line).unwrap();
    assert_eq!(key.bound_names().unwrap(), ["real"]);
    assert!(real.bound_names().unwrap().is_empty());
    let mut kh = KnownHosts::new();
    for n in key.bound_names().unwrap() {
        kh.pin_named(key.clone(), &n);
    }
    assert!(kh.check("h", 1, &real).is_ok());
    let fp = real.fingerprint();
    assert!(kh.check_peer_name(&fp, "real").is_ok());
    let msg = kh.check_peer_name(&fp, "other").unwrap_err().to_string();
    assert!(msg.contains("\"other\"") && msg.contains("real"), "{msg}");
    let bad = format!("{} duplex-name=\"x", real.to_openssh());
    let err = PublicKey::parse(&bad).unwrap().bound_names().unwrap_err();
    assert!(err.to_string().contains("not closed"), "{err}");
}

#[test]
fn authorized_keys_names_of_one_key_combine() {
    let k = Identity::generate().public_key();
    let line = k.to_openssh();
    let text =
        format!("duplex-name=\"a\" {line}\nno-pty,duplex-name=b {line} again\n{line} unnamed\n");
    let ak = AuthorizedKeys::parse(&text).unwrap();
    let fp = k.fingerprint();
    assert!(ak.check_name(&fp, "a").is_ok());
    assert!(ak.check_name(&fp, "b").is_ok());
    let err = ak.check_name(&fp, "c").unwrap_err();
    assert!(matches!(err, NameBindingError::NotItsName { .. }), "{err}");
    assert!(err.to_string().contains("a, b"), "{err}");
    // Another key may use neither name.
    let other = Identity::generate().public_key().fingerprint();
    assert!(ak.check_name(&other, "a").is_err());
    assert!(ak.check_name(&other, "b").is_err());
    assert!(ak.check_name(&other, "c").is_ok());
}

#[test]
fn pinned_and_danger() {
    let k = Identity::generate().public_key();
    assert!(
        KnownHosts::new()
            .with_pinned(k.clone())
            .check("h", 1, &k)
            .is_ok()
    );
    assert!(KnownHosts::new().check("h", 1, &k).is_err());
    assert!(KnownHosts::danger_accept_any().check("h", 1, &k).is_ok());
    assert!(AuthorizedKeys::danger_accept_any().authorizes(&k));
    assert!(!AuthorizedKeys::new().authorizes(&k));
}
