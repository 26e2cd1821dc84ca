//! Caches: `state_dir/cache/<key>/` holds the cached files, relative to the workspace, and persists
//! across runs.

use std::io::Read;
use std::path::Path;

use gantry_pipeline::plan::{Cache, CacheKey};
use gantry_pipeline::vars;
use sha2::{Digest, Sha256};

/// The key of `cache` for a job whose variables `lookup` resolves, with `workspace` its files.
pub(crate) fn key(
    cache: &Cache,
    lookup: &dyn Fn(&str) -> Option<String>,
    workspace: &Path,
) -> Result<String, String> {
    let key = match &cache.key {
        CacheKey::Literal(k) => vars::expand(k, lookup),
        CacheKey::Files { files, prefix } => {
            let mut h = Sha256::new();
            for f in files {
                let f = vars::expand(f, lookup);
                h.update(f.as_bytes());
                h.update([0]);
                if let Ok(mut file) = std::fs::File::open(workspace.join(&f)) {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = file.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                }
                h.update([0]);
            }
            let hex: String = h
                .finalize()
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect();
            match prefix
                .as_ref()
                .map(|p| vars::expand(p, lookup))
                .filter(|p| !p.is_empty())
            {
                Some(p) => format!("{p}-{hex}"),
                None => hex,
            }
        }
    };
    let key = if key.trim().is_empty() {
        "default".to_string()
    } else {
        key
    };
    check(&key)?;
    Ok(format!("{key}{}", cache.key_suffix))
}

/// Rejects keys that cannot name a directory, as GitLab rejects them.
pub(crate) fn check(key: &str) -> Result<(), String> {
    let lower = key.to_ascii_lowercase();
    if key.contains('/') || lower.contains("%2f") {
        return Err(format!("cache:key `{key}` must not contain `/`"));
    }
    if key == "." || key == ".." || lower == "%2e" || lower == "%2e%2e" {
        return Err(format!("cache:key `{key}` must not be `.` or `..`"));
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(format!(
            "cache:key `{key}` contains a character that cannot be part of a directory name"
        ));
    }
    if key.len() > 255 {
        return Err(format!("cache:key `{key}` is longer than 255 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(k: &str) -> Cache {
        Cache {
            key: CacheKey::Literal(k.into()),
            paths: Vec::new(),
            untracked: false,
            policy: gantry_pipeline::plan::CachePolicy::PullPush,
            when: gantry_pipeline::plan::ArtifactsWhen::OnSuccess,
            fallback_keys: Vec::new(),
            unprotect: false,
            key_suffix: String::new(),
        }
    }

    #[test]
    fn keys_expand_default_and_validate() {
        let d = tempfile::tempdir().unwrap();
        let look = |n: &str| (n == "REF").then(|| "main".to_string());
        assert_eq!(
            key(&literal("deps-$REF"), &look, d.path()).unwrap(),
            "deps-main"
        );
        assert_eq!(key(&literal(""), &look, d.path()).unwrap(), "default");
        assert!(
            key(&literal("a/b"), &look, d.path())
                .unwrap_err()
                .contains("must not contain `/`")
        );
        assert!(key(&literal(".."), &look, d.path()).is_err());

        std::fs::write(d.path().join("lock"), "v1").unwrap();
        let files = Cache {
            key: CacheKey::Files {
                files: vec!["lock".into(), "missing".into()],
                prefix: Some("$REF".into()),
            },
            ..literal("")
        };
        let k1 = key(&files, &look, d.path()).unwrap();
        assert!(
            k1.starts_with("main-") && k1.len() == "main-".len() + 32,
            "{k1}"
        );
        std::fs::write(d.path().join("lock"), "v2").unwrap();
        assert_ne!(key(&files, &look, d.path()).unwrap(), k1);
    }
}
