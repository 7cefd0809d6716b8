//! The `store` setting: which store a collector opens. `sqlite:PATH`, a
//! bare path, or nothing is the SQLite file (nothing: the `db` setting);
//! `postgres://…` or `postgresql://…` is a PostgreSQL database, in the
//! libpq URL form tokio-postgres reads.
//!
//! A password may come in the URL or from a file (`store_password_file`);
//! either way it is never shown: [`StoreUrl`]'s `Display` and every error
//! here print the URL with the password replaced by `***`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The store a collector opens.
#[derive(Clone)]
pub enum StoreUrl {
    /// The SQLite file at this path.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// What the client connects with (password included); boxed, as
        /// it is ten times the size of a path.
        config: Box<tokio_postgres::Config>,
        /// The URL as given, with any password hidden.
        shown: String,
    },
}

/// Why the `store` setting cannot be used. The URL in it has its password
/// hidden.
#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    #[error("store (--store) {shown}: {reason}")]
    Invalid { shown: String, reason: String },
    #[error("store_password_file (--store-password-file) {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "store_password_file (--store-password-file) is for a PostgreSQL store; \
         the store is the SQLite file {0}"
    )]
    PasswordForSqlite(PathBuf),
}

impl StoreUrl {
    /// Reads the setting: `store` if given, else the SQLite file `db`; with
    /// the password in `password_file` (its first line), if given.
    pub fn resolve(
        store: Option<&str>,
        db: &Path,
        password_file: Option<&Path>,
    ) -> Result<StoreUrl, StoreUrlError> {
        let url = match store {
            Some(s) => s.parse()?,
            None => StoreUrl::Sqlite(db.to_path_buf()),
        };
        match (url, password_file) {
            (url, None) => Ok(url),
            (StoreUrl::Sqlite(path), Some(_)) => Err(StoreUrlError::PasswordForSqlite(path)),
            (StoreUrl::Postgres { mut config, shown }, Some(file)) => {
                let text =
                    std::fs::read_to_string(file).map_err(|source| StoreUrlError::PasswordFile {
                        path: file.to_path_buf(),
                        source,
                    })?;
                let password = text.lines().next().unwrap_or("");
                if password.is_empty() {
                    return Err(StoreUrlError::PasswordFile {
                        path: file.to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the file's first line is empty",
                        ),
                    });
                }
                config.password(password);
                Ok(StoreUrl::Postgres { config, shown })
            }
        }
    }

    /// Whether this is a PostgreSQL store (fleet mode).
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreUrl::Postgres { .. })
    }
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(s: &str) -> Result<StoreUrl, StoreUrlError> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let shown = hide_password(s);
            let config = s
                .parse::<tokio_postgres::Config>()
                .map_err(|e| StoreUrlError::Invalid {
                    shown: shown.clone(),
                    // tokio-postgres's parse errors name the part, not the
                    // value; hidden anyway, in case a later one quotes it.
                    reason: hide_in(&e.to_string(), s, &shown),
                })?;
            if config.get_dbname().is_none() {
                return Err(StoreUrlError::Invalid {
                    shown,
                    reason: "name the database: postgres://user@host:port/DATABASE".into(),
                });
            }
            return Ok(StoreUrl::Postgres {
                config: Box::new(config),
                shown,
            });
        }
        let path = s.strip_prefix("sqlite:").unwrap_or(s);
        if path.is_empty() || path.contains("://") {
            return Err(StoreUrlError::Invalid {
                shown: hide_password(s),
                reason: "expected sqlite:PATH, a path, or postgres://user@host:port/database"
                    .into(),
            });
        }
        Ok(StoreUrl::Sqlite(PathBuf::from(path)))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres { shown, .. } => f.write_str(shown),
        }
    }
}

impl fmt::Debug for StoreUrl {
    /// As `Display`: the password never reaches a log through `?url`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// The URL with the password of its user info (`user:PASSWORD@`) and of
/// a `password=` query parameter replaced by `***`.
pub fn hide_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let hidden: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", hidden.join("&"));
    }
    out
}

/// `text` with `url` replaced by `shown`, should a message quote it.
fn hide_in(text: &str, url: &str, shown: &str) -> String {
    text.replace(url, shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_postgres_urls_are_told_apart() {
        let db = Path::new("/var/lib/tcpstall/tcpstall.db");
        let s = |v: &str| StoreUrl::resolve(Some(v), db, None).map(|u| u.to_string());
        assert_eq!(
            StoreUrl::resolve(None, db, None).expect("default").to_string(),
            "sqlite:/var/lib/tcpstall/tcpstall.db"
        );
        assert_eq!(s("sqlite:/tmp/x.db").expect("sqlite"), "sqlite:/tmp/x.db");
        assert_eq!(s("x.db").expect("bare"), "sqlite:x.db");
        for url in [
            "postgres://tcpstall@db.example:5432/tcpstall",
            "postgresql://tcpstall@127.0.0.1/tcpstall?connect_timeout=5",
        ] {
            let u = StoreUrl::resolve(Some(url), db, None).expect(url);
            assert!(u.is_postgres());
            assert_eq!(u.to_string(), url);
        }
        let err = s("postgres://tcpstall@db.example:5432").expect_err("no database");
        assert!(err.to_string().contains("store (--store)"), "{err}");
        let err = s("mysql://x@y/z").expect_err("other scheme");
        assert!(err.to_string().contains("store (--store)"), "{err}");
    }

    #[test]
    fn a_password_is_never_shown() {
        let url = "postgres://tcpstall:s3cr%21t@db.example:5432/tcpstall?password=other&sslmode=disable";
        let u: StoreUrl = url.parse().expect("parses");
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(shown.contains("postgres://tcpstall:***@db.example:5432/tcpstall"));
        let err = "postgres://u:hunter2@h:notaport/db"
            .parse::<StoreUrl>()
            .expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(
            hide_password("postgresql://u:p@h/d"),
            "postgresql://u:***@h/d"
        );
        assert_eq!(hide_password("postgresql://u@h/d"), "postgresql://u@h/d");
    }

    #[test]
    fn a_password_file_gives_the_password_and_names_itself_when_bad() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").expect("write");
        let db = Path::new("x.db");
        let u = StoreUrl::resolve(Some("postgres://u@h/d"), db, Some(&file)).expect("resolves");
        let StoreUrl::Postgres { config, .. } = &u else {
            panic!("postgres");
        };
        assert_eq!(config.get_password(), Some(&b"hunter2"[..]));
        assert!(!format!("{u} {u:?}").contains("hunter2"));
        let missing = dir.path().join("none");
        let err = StoreUrl::resolve(Some("postgres://u@h/d"), db, Some(&missing))
            .expect_err("missing");
        assert!(err.to_string().contains("store_password_file"), "{err}");
        let err = StoreUrl::resolve(None, db, Some(&file)).expect_err("sqlite");
        assert!(err.to_string().contains("store_password_file"), "{err}");
    }
}
