//! Secrets at rest (issue 16, finding 8): the credentials in a project's stored settings are
//! encrypted with XChaCha20-Poly1305 under the server's secret key, each value with its own random
//! nonce and bound to its project and field (the associated data), so that a database file, dump or
//! backup does not give them away and a ciphertext moved to another project or field does not open.
//!
//! A sealed value is `enc:v1:` + base64(nonce ‖ ciphertext) in place of the plain string, in the
//! same JSON document ([`ProjectSpec`]): the store keeps opaque text and knows nothing of this. A
//! value without the prefix is one an older server stored in plaintext: it is read as it is, and
//! [`check_and_upgrade`] seals it at startup.
//!
//! The key: `GANTRY_SECRET_KEY` (32 bytes as 64 hex digits or base64), else the file named by
//! `secret_key_file` (the same text), else `DATA_DIR/secret-key`, generated (mode 0600) on the first
//! start. Every server sharing a database needs the same key.
//!
//! Rotation: a server given the previous key as well (`GANTRY_SECRET_KEY_PREVIOUS` or
//! `secret_key_previous_file`) opens with it what the current key does not open, and
//! [`check_and_upgrade`] seals it again under the current key at startup.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use gantry_store::Store;

use crate::config::Config;
use crate::spec::ProjectSpec;

/// The mark of a sealed value, with the format's version.
const PREFIX: &str = "enc:v1:";
/// XChaCha20's nonce: long enough to be drawn at random for every value.
const NONCE_LEN: usize = 24;
/// The name of the generated key file in the data dir.
pub(crate) const KEY_FILE: &str = "secret-key";

/// The server's secret key, ready to seal and open values.
pub(crate) struct Secrets {
    cipher: XChaCha20Poly1305,
    /// The key before a rotation: it only opens.
    previous: Option<XChaCha20Poly1305>,
    /// Where the key came from, for error messages (never the key).
    source: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({})", self.source)
    }
}

/// A sealed value that does not open: a wrong key, or a value changed or moved in the database.
#[derive(Debug)]
pub(crate) struct OpenError {
    /// The field, as `webhook_secret`, `forge.token`, `variables.KEY`.
    pub field: String,
}

impl Secrets {
    /// Secrets under `key`; `source` says where it came from.
    pub fn new(key: &[u8; 32], source: impl Into<String>) -> Secrets {
        Secrets {
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(key)),
            previous: None,
            source: source.into(),
        }
    }

    /// These secrets, also opening what `key` sealed.
    #[must_use]
    pub fn with_previous(mut self, key: &[u8; 32]) -> Secrets {
        self.previous = Some(XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(
            key,
        )));
        self
    }

    /// The key of `config`: `secret_key`, else the file `secret_key_file`, else the data dir's
    /// `secret-key`, written with a new random key when it does not exist (the second answer is
    /// then its path).
    ///
    /// # Errors
    /// A key that is not 32 bytes of hex or base64, or a key file that cannot be read or written.
    pub fn load(config: &Config) -> anyhow::Result<(Secrets, Option<PathBuf>)> {
        let previous = if let Some(text) = &config.secret_key_previous {
            Some(parse_key(&text.0).context("invalid GANTRY_SECRET_KEY_PREVIOUS")?)
        } else if let Some(path) = &config.secret_key_previous_file {
            Some(read_key_file(path)?)
        } else {
            None
        };
        let (secrets, generated) = Secrets::current(config)?;
        Ok(match previous {
            Some(key) => (secrets.with_previous(&key), generated),
            None => (secrets, generated),
        })
    }

    fn current(config: &Config) -> anyhow::Result<(Secrets, Option<PathBuf>)> {
        if let Some(text) = &config.secret_key {
            let key = parse_key(&text.0).context("invalid GANTRY_SECRET_KEY")?;
            return Ok((Secrets::new(&key, "the key from GANTRY_SECRET_KEY"), None));
        }
        if let Some(path) = &config.secret_key_file {
            let key = read_key_file(path)?;
            return Ok((
                Secrets::new(&key, format!("the key in {}", path.display())),
                None,
            ));
        }
        let path = config.data_dir.join(KEY_FILE);
        let source = format!("the key in {}", path.display());
        if path.exists() {
            return Ok((Secrets::new(&read_key_file(&path)?, source), None));
        }
        let key = generate_key_file(&path)?;
        Ok((Secrets::new(&key, source), Some(path)))
    }

    /// `plain` sealed for `aad`: `enc:v1:` + base64(nonce ‖ ciphertext).
    pub fn seal(&self, aad: &[u8], plain: &str) -> String {
        use rand::RngCore as _;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 fails only for messages past 256 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// The plain value of a sealed `stored` (see [`Secrets::seal`]), if it opens with `aad`.
    pub fn open_text(&self, aad: &[u8], stored: &str) -> Option<String> {
        self.open(aad, stored).map(|(plain, _)| plain)
    }

    /// The plain value of a sealed `stored`, and whether it took the previous key; `None` when it
    /// opens under neither key with `aad`.
    fn open(&self, aad: &[u8], stored: &str) -> Option<(String, bool)> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(stored.strip_prefix(PREFIX)?)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let open = |cipher: &XChaCha20Poly1305| {
            cipher
                .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
                .ok()
        };
        let (plain, previous) = match open(&self.cipher) {
            Some(plain) => (plain, false),
            None => (open(self.previous.as_ref()?)?, true),
        };
        Some((String::from_utf8(plain).ok()?, previous))
    }

    /// The stored form of project `name`'s settings: every secret field sealed.
    pub fn seal_spec(&self, name: &str, spec: &ProjectSpec) -> ProjectSpec {
        let mut sealed = spec.clone();
        for (field, value) in secret_fields(&mut sealed) {
            *value = self.seal(&aad(name, &field), value);
        }
        sealed
    }

    /// Opens the sealed fields of project `name`'s stored settings in place; answers whether some
    /// secret must be sealed again: stored in plaintext (by a server older than encryption at rest)
    /// or under the previous key.
    ///
    /// # Errors
    /// The first field that does not open.
    pub fn open_spec(&self, name: &str, spec: &mut ProjectSpec) -> Result<bool, OpenError> {
        let mut stale = false;
        for (field, value) in secret_fields(spec) {
            if value.starts_with(PREFIX) {
                let (plain, previous) = self
                    .open(&aad(name, &field), value)
                    .ok_or(OpenError { field })?;
                *value = plain;
                stale |= previous;
            } else {
                stale = true;
            }
        }
        Ok(stale)
    }
}

/// The associated data of project `name`'s `field`: a value opens only where it was sealed.
fn aad(name: &str, field: &str) -> Vec<u8> {
    format!("gantry project\0{name}\0{field}").into_bytes()
}

/// The secret fields of a project's settings, by name: the webhook secret, the forge token, every
/// variable's value, and the repository URL when it carries credentials (`https://USER:TOKEN@…`).
fn secret_fields(spec: &mut ProjectSpec) -> Vec<(String, &mut String)> {
    let mut out = Vec::new();
    if spec.repo_url.starts_with(PREFIX) || has_credentials(&spec.repo_url) {
        out.push(("repo_url".to_string(), &mut spec.repo_url));
    }
    if let Some(s) = spec.webhook_secret.as_mut() {
        out.push(("webhook_secret".to_string(), s));
    }
    if let Some(t) = spec.forge.as_mut().and_then(|f| f.token.as_mut()) {
        out.push(("forge.token".to_string(), t));
    }
    for v in &mut spec.variables {
        let field = format!("variables.{}.{}", v.key, v.environment_scope);
        if let Some(value) = v.value.as_mut() {
            out.push((field, value));
        }
    }
    // A `notify:` rule's URL holds its hook's token when it is not a variable.
    for (i, rule) in spec.notify.iter_mut().enumerate() {
        out.push((format!("notify.{i}.url"), &mut rule.target.url));
        if let Some(secret) = rule.target.secret.as_mut() {
            out.push((format!("notify.{i}.secret"), secret));
        }
    }
    out
}

/// Whether a URL has a user-info part (`scheme://USER[:PASSWORD]@host/…`).
fn has_credentials(url: &str) -> bool {
    url.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['/', '?', '#'])
            .next()
            .is_some_and(|authority| authority.contains('@'))
    })
}

/// A key written as 64 hex digits or as base64 (padded or not) of 32 bytes.
///
/// # Errors
/// Anything else; the message never repeats the text.
pub(crate) fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.is_empty() {
        bail!(
            "the key is empty: it must be 32 bytes, as 64 hex digits or base64 (`openssl rand -base64 32`)"
        );
    }
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .ok()
    };
    let Some(bytes) = bytes else {
        bail!(
            "the key is neither hex nor base64: it must be 32 bytes, as 64 hex digits or base64 (`openssl rand -base64 32`)"
        );
    };
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "the key is {} bytes: it must be 32 bytes, as 64 hex digits or base64 (`openssl rand -base64 32`)",
            bytes.len()
        )
    })
}

fn read_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret key file {}", path.display()))?;
    parse_key(&text).with_context(|| format!("invalid secret key file {}", path.display()))
}

/// Writes a new random key to `path` (mode 0600), unless another server wrote one first: then
/// that one is the key.
fn generate_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    use rand::RngCore as _;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        // A temporary file (0600) renamed into place without replacing: a reader never sees half
        // a key, and two servers starting together end up with one.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        writeln!(
            tmp,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )?;
        tmp.as_file().sync_all()?;
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
        Ok(())
    };
    match write() {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path),
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// At startup: opens every project's secrets, so that a wrong key stops the server with an error
/// that says so rather than failing webhooks and jobs later, and seals under the current key the
/// secrets a server older than encryption at rest stored in plaintext and those sealed under the
/// previous key. Answers how many projects were sealed again.
///
/// # Errors
/// A secret that does not open (the wrong key), or a store that fails.
pub(crate) async fn check_and_upgrade(
    store: &dyn Store,
    secrets: &Secrets,
) -> anyhow::Result<usize> {
    let mut upgraded = 0;
    for record in store.projects().await.context("cannot read the projects")? {
        let mut spec: ProjectSpec = serde_json::from_str(&record.spec)
            .with_context(|| format!("project {}: invalid stored settings", record.name))?;
        let stale = secrets.open_spec(&record.name, &mut spec).map_err(|e| {
            anyhow::anyhow!(
                "cannot decrypt {} of project `{}` with {}: the secret key is not the one \
                 the secrets were encrypted with (set GANTRY_SECRET_KEY or secret_key_file to \
                 that key, or GANTRY_SECRET_KEY_PREVIOUS to re-encrypt them under a new one)",
                e.field,
                record.name,
                secrets.source
            )
        })?;
        if stale {
            let sealed = serde_json::to_string(&secrets.seal_spec(&record.name, &spec))?;
            store
                .update_project(&record.name, &sealed)
                .await
                .with_context(|| {
                    format!("cannot encrypt the secrets of project {}", record.name)
                })?;
            upgraded += 1;
        }
    }
    Ok(upgraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(byte: u8) -> Secrets {
        Secrets::new(&[byte; 32], "a test key")
    }

    fn spec() -> ProjectSpec {
        serde_json::from_value(serde_json::json!({
            "repo_url": "https://ci:glpat-in-the-url@git.example.com/a/b.git",
            "default_branch": "main",
            "webhook_secret": "the-webhook-secret",
            "variables": [
                {"key": "TOKEN", "value": "masked-value-1", "masked": true},
                {"key": "PLAIN", "value": "plain-value-2"},
                {"key": "EMPTY"},
            ],
            "forge": {"kind": "gitlab", "api_url": "https://git.example.com", "token": "forge-token-3", "project": "a/b"},
            "notify": [{"on": ["rollback"], "target": {"kind": "webhook",
                "url": "https://hooks.example/notify-token-4", "secret": "notify-secret-5"}}],
        }))
        .unwrap()
    }

    #[test]
    fn sealed_specs_hold_no_plaintext_and_open_back() {
        let s = secrets(7);
        let sealed = s.seal_spec("demo", &spec());
        let json = serde_json::to_string(&sealed).unwrap();
        for plain in [
            "glpat-in-the-url",
            "the-webhook-secret",
            "masked-value-1",
            "plain-value-2",
            "forge-token-3",
            "notify-token-4",
            "notify-secret-5",
        ] {
            assert!(!json.contains(plain), "{plain} in {json}");
        }
        assert!(sealed.webhook_secret.unwrap().starts_with(PREFIX));
        let mut opened = s.seal_spec("demo", &spec());
        assert!(!s.open_spec("demo", &mut opened).unwrap(), "all sealed");
        assert_eq!(
            serde_json::to_value(&opened).unwrap(),
            serde_json::to_value(spec()).unwrap()
        );
        // A fresh nonce per value: sealing twice gives two ciphertexts.
        assert_ne!(s.seal(b"x", "same"), s.seal(b"x", "same"));
    }

    #[test]
    fn a_wrong_key_or_a_moved_value_does_not_open() {
        let sealed = secrets(7).seal_spec("demo", &spec());
        let err = secrets(8)
            .open_spec("demo", &mut sealed.clone())
            .unwrap_err();
        assert_eq!(err.field, "repo_url");
        // Another project's ciphertext does not open here, nor another field's.
        assert_eq!(
            secrets(7)
                .open_spec("other", &mut sealed.clone())
                .unwrap_err()
                .field,
            "repo_url"
        );
        let mut swapped = sealed.clone();
        swapped.webhook_secret = swapped.forge.as_ref().unwrap().token.clone();
        assert_eq!(
            secrets(7)
                .open_spec("demo", &mut swapped)
                .unwrap_err()
                .field,
            "webhook_secret"
        );
    }

    #[test]
    fn the_previous_key_opens_and_asks_for_sealing_again() {
        let sealed = secrets(7).seal_spec("demo", &spec());
        let rotated = secrets(8).with_previous(&[7; 32]);
        let mut opened = sealed.clone();
        assert!(rotated.open_spec("demo", &mut opened).unwrap(), "stale");
        assert_eq!(opened.webhook_secret.as_deref(), Some("the-webhook-secret"));
        let mut resealed = rotated.seal_spec("demo", &opened);
        assert!(!secrets(8).open_spec("demo", &mut resealed).unwrap());
        assert_eq!(
            resealed.webhook_secret.as_deref(),
            Some("the-webhook-secret")
        );
    }

    #[test]
    fn plaintext_values_are_read_and_reported() {
        let mut old = spec();
        assert!(secrets(7).open_spec("demo", &mut old).unwrap());
        assert_eq!(old.webhook_secret.as_deref(), Some("the-webhook-secret"));
    }

    #[test]
    fn urls_with_credentials() {
        assert!(has_credentials("https://u:p@host/x.git"));
        assert!(has_credentials("https://token@host"));
        assert!(!has_credentials("https://host/a@b.git"));
        assert!(!has_credentials("git@host:a/b.git"));
        assert!(!has_credentials("/srv/repo.git"));
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        let hex = "00".repeat(32);
        assert_eq!(parse_key(&hex).unwrap(), [0; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(parse_key(&format!(" {b64}\n")).unwrap(), [1; 32]);
        assert_eq!(parse_key(b64.trim_end_matches('=')).unwrap(), [1; 32]);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let e = format!("{:#}", parse_key(&short).unwrap_err());
        assert!(e.contains("is 16 bytes"), "{e}");
        let e = format!("{:#}", parse_key("not a key!").unwrap_err());
        assert!(e.contains("neither hex nor base64"), "{e}");
        assert!(!e.contains("not a key!"), "{e}");
        assert!(parse_key("").is_err());
    }
}
