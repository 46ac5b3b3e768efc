//! Secrets are *references* in the config file (`*_env` names an environment
//! variable, `*_file` a file such as a mounted Kubernetes Secret). They are
//! resolved once into [`SecretString`], whose `Debug` prints `[REDACTED]`, so a
//! secret can never reach a log line, an error message or an audit row by
//! accident.

use secrecy::SecretString;
use std::path::PathBuf;

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The name of an environment variable holding the secret.
    Env(String),
    /// A file holding the secret (trailing newline trimmed).
    File(PathBuf),
}

/// Why a referenced secret could not be read. Names the reference, never the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set (or empty); export it or point the key at another variable")]
    EnvMissing(String),
    #[error("secret file {path} cannot be read: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("secret file {0} is empty")]
    FileEmpty(String),
}

impl SecretRef {
    /// Builds a reference from the pair of optional `<name>_env` / `<name>_file` keys.
    pub fn from_pair(env: Option<&str>, file: Option<&str>) -> Option<Self> {
        match (env, file) {
            (Some(e), _) => Some(Self::Env(e.to_owned())),
            (None, Some(f)) => Some(Self::File(PathBuf::from(f))),
            (None, None) => None,
        }
    }

    /// Reads the secret now from the process environment or the file.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        self.resolve_with(&super::process_env)
    }

    /// Reads the secret with an injected environment lookup (files are read from disk).
    pub fn resolve_with(&self, env: super::EnvLookup<'_>) -> Result<SecretString, SecretError> {
        match self {
            Self::Env(name) => match env(name) {
                Some(v) if !v.trim().is_empty() => Ok(SecretString::from(v)),
                _ => Err(SecretError::EnvMissing(name.clone())),
            },
            Self::File(path) => {
                let shown = path.display().to_string();
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| SecretError::FileUnreadable { path: shown.clone(), reason: e.kind().to_string() })?;
                let trimmed = raw.trim_end_matches(['\r', '\n']);
                if trimmed.is_empty() {
                    return Err(SecretError::FileEmpty(shown));
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
        }
    }

    /// A human description (`env JSM_WEBHOOK_SECRET`), safe to print.
    pub fn describe(&self) -> String {
        match self {
            Self::Env(n) => format!("env {n}"),
            Self::File(p) => format!("file {}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_secret_read_from_a_file_has_its_trailing_newline_trimmed_and_never_debug_prints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = SecretRef::File(path).resolve().unwrap();
        assert_eq!(secret.expose_secret(), "s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_missing_env_var_is_named_in_the_error() {
        let err = SecretRef::Env("ACCESSGOV_TEST_DEFINITELY_UNSET_VAR".into()).resolve().unwrap_err();
        assert!(err.to_string().contains("ACCESSGOV_TEST_DEFINITELY_UNSET_VAR"));
    }

    #[test]
    fn an_empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(SecretRef::File(path).resolve(), Err(SecretError::FileEmpty(_))));
    }
}
