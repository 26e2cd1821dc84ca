//! `include:component` addresses and versions, as GitLab documents them; shared by the CLI and the
//! server, which fetch components (this crate does no IO).
//!
//! An address is `FQDN/PROJECT-PATH/NAME@VERSION`. The component is `templates/NAME.yml`, else
//! `templates/NAME/template.yml`, of the project at `VERSION`: a commit SHA, a tag, a branch, or
//! `~latest` / a partial semantic version (`1`, `1.2`), which select the highest released version
//! that matches, pre-releases excluded.

/// A parsed component address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The host (and port) of the instance.
    pub fqdn: String,
    /// The project's full path.
    pub project: String,
    /// The component's name.
    pub name: String,
    /// The version as written.
    pub version: String,
}

impl Address {
    /// Parses `FQDN/PROJECT-PATH/NAME@VERSION`; `min_project_segments` is how many path segments the
    /// project needs at least (GitLab: 2, `group/project`).
    ///
    /// # Errors
    /// No version, or too few path segments.
    pub fn parse(s: &str, min_project_segments: usize) -> Result<Address, String> {
        let (address, version) = s
            .rsplit_once('@')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| {
                "a component needs a version: `FQDN/PROJECT/NAME@VERSION` (a tag such as 1.0.0, \
             ~latest, a commit SHA or a branch)"
                    .to_string()
            })?;
        let segs: Vec<&str> = address.split('/').filter(|s| !s.is_empty()).collect();
        if segs.len() < 2 + min_project_segments || segs.iter().any(|s| *s == "." || *s == "..") {
            return Err(format!(
                "`{address}` is not a component address: `FQDN/PROJECT-PATH/NAME`"
            ));
        }
        Ok(Address {
            fqdn: segs[0].to_string(),
            project: segs[1..segs.len() - 1].join("/"),
            name: segs[segs.len() - 1].to_string(),
            version: version.to_string(),
        })
    }

    /// The files the component may be, in order.
    #[must_use]
    pub fn files(&self) -> Vec<String> {
        files(&self.name)
    }
}

/// A component's file: `templates/NAME.yml`, else `templates/NAME/template.yml`.
#[must_use]
pub fn files(name: &str) -> Vec<String> {
    vec![
        format!("templates/{name}.yml"),
        format!("templates/{name}/template.yml"),
    ]
}

/// Whether `version` selects among releases: `~latest`, `1` or `1.2`.
#[must_use]
pub fn is_selector(version: &str) -> bool {
    version == "~latest" || {
        let parts: Vec<&str> = version.split('.').collect();
        parts.len() <= 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// Whether `r` is a full commit SHA (SHA-1 or SHA-256).
#[must_use]
pub fn is_sha(r: &str) -> bool {
    matches!(r.len(), 40 | 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A released semantic version `[v]MAJOR.MINOR.PATCH`; `None` for a pre-release or anything else.
/// Build metadata is ignored.
#[must_use]
pub fn semver(tag: &str) -> Option<(u64, u64, u64)> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let t = t.split('+').next().unwrap_or(t);
    if t.contains('-') {
        return None;
    }
    let mut it = t.split('.').map(|p| p.parse::<u64>().ok());
    let v = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(v)
}

/// The highest of `tags` that `selector` (`~latest`, `1`, `1.2`) selects.
pub fn select_version<'a>(selector: &str, tags: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let want: Vec<u64> = if selector == "~latest" {
        Vec::new()
    } else {
        selector.split('.').filter_map(|p| p.parse().ok()).collect()
    };
    tags.filter_map(|t| semver(t).map(|v| (v, t)))
        .filter(|((a, b, _), _)| {
            want.first().is_none_or(|w| w == a) && want.get(1).is_none_or(|w| w == b)
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_pick_the_highest_matching_release() {
        // GitLab's documented example.
        let tags = [
            "1.0.0",
            "1.1.0",
            "1.1.1",
            "1.2.0",
            "2.0.0",
            "2.0.1",
            "2.1.0",
            "3.0.0-rc1",
        ];
        let pick = |s| select_version(s, tags.iter().copied());
        assert_eq!(pick("1"), Some("1.2.0"));
        assert_eq!(pick("1.1"), Some("1.1.1"));
        assert_eq!(pick("~latest"), Some("2.1.0"));
        assert_eq!(pick("4"), None);
        assert!(is_selector("~latest") && is_selector("1") && is_selector("1.2"));
        assert!(!is_selector("1.2.3") && !is_selector("main") && !is_selector("v1"));
    }

    #[test]
    fn addresses_parse() {
        let a = Address::parse("gitlab.example.com:8443/g/sub/p/deploy@1.0", 2).unwrap();
        assert_eq!(
            (
                a.fqdn.as_str(),
                a.project.as_str(),
                a.name.as_str(),
                a.version.as_str()
            ),
            ("gitlab.example.com:8443", "g/sub/p", "deploy", "1.0")
        );
        assert_eq!(
            a.files(),
            ["templates/deploy.yml", "templates/deploy/template.yml"]
        );
        assert!(Address::parse("host/g/p/deploy", 2).is_err());
        assert!(Address::parse("host/p/deploy@1", 2).is_err());
        assert!(Address::parse("host/p/deploy@1", 1).is_ok());
        assert!(Address::parse("host/g/../deploy@1", 1).is_err());
    }
}
