//! The store's errors: [`StoreError`], whose database errors keep the driver's error as their
//! `source`.

/// The result of a store call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong.
#[derive(Debug)]
pub enum StoreError {
    /// Something with this key exists already (a project name).
    Conflict(String),
    /// The job is no longer running on this agent: its lease ran out, or it was finished or canceled.
    LeaseLost,
    /// A log chunk starts past the stored end, which holds this many bytes.
    LogGap(i64),
    /// An artifacts upload is gone (a later upload of the job dropped it) or does not hold the
    /// chunks it should.
    UploadGone,
    /// The database failed: what was being done, and the database's error as the `source`.
    Database(DatabaseError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conflict(what) => write!(f, "{what} already exists"),
            Self::LeaseLost => f.write_str("the job is no longer leased to this agent"),
            Self::LogGap(size) => write!(
                f,
                "the log holds {size} bytes; a chunk must start at or before that"
            ),
            Self::UploadGone => f.write_str("the artifacts upload is gone or incomplete"),
            Self::Database(e) => write!(f, "database: {e}"),
        }
    }
}

impl StoreError {
    /// A database error without the database's own (a file, a migration).
    pub(crate) fn database(message: String) -> Self {
        Self::Database(message.into())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(DatabaseError {
                source: Some(e), ..
            }) => Some(e),
            _ => None,
        }
    }
}

/// What [`StoreError::Database`] carries: what failed, and the database's own error (which
/// [`std::error::Error::source`] of the [`StoreError`] answers), if it came from the database.
#[derive(Debug)]
pub struct DatabaseError {
    message: String,
    source: Option<sqlx::Error>,
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&str> for DatabaseError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl From<String> for DatabaseError {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

/// Wraps a sqlx error with what was being done.
pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        StoreError::Database(DatabaseError {
            message: format!("{context}: {e}"),
            source: Some(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_is_the_source_of_a_store_error() {
        let e = db("reading a project")(sqlx::Error::RowNotFound);
        assert_eq!(
            e.to_string(),
            format!("database: reading a project: {}", sqlx::Error::RowNotFound)
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::RowNotFound)
            ),
            "{source:?}"
        );
        assert!(std::error::Error::source(&StoreError::LeaseLost).is_none());
    }
}
