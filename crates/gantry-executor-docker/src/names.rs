//! Image references, service aliases, registry credentials and limits: the pure parts.

use std::collections::HashMap;

use base64::Engine as _;

/// `name` and `tag` to pull: the tag (or digest) is split off the last path component; a reference
/// without one pulls `latest` (an empty tag would pull every tag).
pub(crate) fn pull_reference(image: &str) -> (String, String) {
    let last = image.rfind('/').map_or(0, |i| i + 1);
    if let Some(at) = image[last..].find('@') {
        let at = last + at;
        return (image[..at].to_string(), image[at + 1..].to_string());
    }
    match image[last..].rfind(':') {
        Some(c) => (
            image[..last + c].to_string(),
            image[last + c + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The image name without tag or digest.
fn repository(image: &str) -> String {
    let (name, _) = pull_reference(image);
    name
}

/// The registry an image comes from, as its host name (`docker.io` for Docker Hub).
pub(crate) fn registry(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// The host names a service is reachable by, as GitLab derives them from the image: `postgres:16` is
/// `postgres`; `registry.example.com/foo/bar:1` is `registry.example.com__foo__bar` and
/// `registry.example.com-foo-bar`; then each of the service's own `alias` values (separated by commas
/// or spaces).
pub(crate) fn service_aliases(image: &str, alias: Option<&str>) -> Vec<String> {
    let repo = repository(image).to_lowercase();
    let mut out = Vec::new();
    let mut add = |a: String| {
        if !a.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    };
    add(repo.replace('/', "__"));
    add(repo.replace('/', "-"));
    for a in alias
        .unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
    {
        add(a.to_string());
    }
    out
}

/// Credentials for `image` from a `DOCKER_AUTH_CONFIG` value, GitLab's (and Docker's `config.json`)
/// format: `{"auths": {"registry.example.com": {"auth": "base64(user:password)"}}}`, or with
/// `username` and `password` instead of `auth`. Docker Hub matches `docker.io`, `index.docker.io`,
/// `registry-1.docker.io` and `https://index.docker.io/v1/`.
pub(crate) fn credentials(
    auth_config: &str,
    image: &str,
) -> Result<Option<bollard::auth::DockerCredentials>, String> {
    let value: serde_json::Value = serde_json::from_str(auth_config)
        .map_err(|e| format!("DOCKER_AUTH_CONFIG is not valid JSON: {e}"))?;
    let Some(auths) = value.get("auths").and_then(serde_json::Value::as_object) else {
        return Ok(None);
    };
    let wanted = registry(image);
    let hub = [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "registry.hub.docker.com",
    ];
    let host_of = |key: &str| {
        let k = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or_default().to_string()
    };
    let entry = auths.iter().find(|(key, _)| {
        let h = host_of(key);
        h == wanted || (wanted == "docker.io" && hub.contains(&h.as_str()))
    });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let (mut username, mut password) = (field("username"), field("password"));
    if let Some(auth) = field("auth").filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("DOCKER_AUTH_CONFIG: `auth` of {key} is not base64: {e}"))?;
        let text = String::from_utf8_lossy(&decoded).into_owned();
        let Some((u, p)) = text.split_once(':') else {
            return Err(format!(
                "DOCKER_AUTH_CONFIG: `auth` of {key} is not `user:password`"
            ));
        };
        username = Some(u.to_string());
        password = Some(p.to_string());
    }
    Ok(Some(bollard::auth::DockerCredentials {
        username,
        password,
        serveraddress: Some(key.clone()),
        identitytoken: field("identitytoken"),
        registrytoken: field("registrytoken"),
        ..Default::default()
    }))
}

/// A memory size as Docker writes it: bytes, or a number with `b`, `k`, `m`, `g` or `t` (binary units,
/// case-insensitive, an optional trailing `b` as in `512mb`).
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    if !(v.is_finite() && v > 0.0) {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    Some((v * mult as f64) as u64)
}

/// A CPU count (`1`, `0.5`, `2.25`).
pub fn parse_cpus(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The labels every object of a job carries.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            pull_reference("postgres:16"),
            ("postgres".into(), "16".into())
        );
        assert_eq!(pull_reference("alpine"), ("alpine".into(), "latest".into()));
        assert_eq!(
            pull_reference("localhost:5000/a/b"),
            ("localhost:5000/a/b".into(), "latest".into())
        );
        assert_eq!(
            pull_reference("r.io/a@sha256:ab"),
            ("r.io/a".into(), "sha256:ab".into())
        );
        assert_eq!(registry("postgres:16"), "docker.io");
        assert_eq!(registry("library/postgres"), "docker.io");
        assert_eq!(registry("r.example.com/a/b:1"), "r.example.com");
        assert_eq!(registry("localhost/a"), "localhost");
    }

    #[test]
    fn aliases_as_gitlab() {
        assert_eq!(service_aliases("postgres:16", None), ["postgres"]);
        assert_eq!(
            service_aliases("registry/foo/bar:1", Some("db, cache other")),
            [
                "registry__foo__bar",
                "registry-foo-bar",
                "db",
                "cache",
                "other"
            ]
        );
        assert_eq!(
            service_aliases("tutum/wordpress:latest", None),
            ["tutum__wordpress", "tutum-wordpress"]
        );
    }

    #[test]
    fn auth_config() {
        let cfg = r#"{"auths":{"r.example.com":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"username":"hub","password":"pw"}}}"#;
        let c = credentials(cfg, "r.example.com/team/app:1")
            .unwrap()
            .unwrap();
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some("pa:ss"));
        let c = credentials(cfg, "postgres:16").unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("hub"));
        assert!(credentials(cfg, "other.io/x").unwrap().is_none());
        assert!(credentials("{", "x").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("2G"), Some(2 << 30));
        assert_eq!(parse_memory("1.5g"), Some(3 << 29));
        assert_eq!(parse_memory("1000"), Some(1000));
        assert_eq!(parse_memory("64mb"), Some(64 << 20));
        assert_eq!(parse_memory("x"), None);
        assert_eq!(parse_cpus("1.5"), Some(1.5));
        assert_eq!(parse_cpus("0"), None);
    }
}
