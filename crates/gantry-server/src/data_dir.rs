//! The data dir: created private to the server's user, with the secrets in it.

use anyhow::Context as _;

use crate::secrets;

/// Creates the data dir when missing, and makes it and the secrets in it private to the server's
/// user (issue 16, finding 8): the dir `0700`, the token files and a SQLite database with its
/// `-wal` and `-shm` files `0600`. Also fixes what an older server left readable.
///
/// # Errors
/// When the dir cannot be created, or a mode cannot be set.
pub(crate) fn secure_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let private = |path: &std::path::Path, mode: u32| -> anyhow::Result<()> {
            match std::fs::metadata(path) {
                Ok(m) if m.permissions().mode() & 0o777 != mode => {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .with_context(|| format!("cannot make {} private", path.display()))
                }
                _ => Ok(()),
            }
        };
        private(dir, 0o700)?;
        for f in [
            "admin-token",
            "registration-token",
            secrets::KEY_FILE,
            "gantry.db",
            "gantry.db-wal",
            "gantry.db-shm",
        ] {
            private(&dir.join(f), 0o600)?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(())
}
