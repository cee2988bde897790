//! PEM files named by the TLS flags of `loupe serve` and of the clients,
//! read and checked when the flags are resolved: a wrong path or a file of
//! the wrong kind stops Loupe at once with the flag's name and the file,
//! not at the first handshake with a line PC.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;

/// A PEM file's path and its bytes, checked to hold what its flag needs.
#[derive(Clone)]
pub struct PemFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The file's contents.
    pub pem: Vec<u8>,
}

// The bytes may be a private key: Debug shows the path only.
impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its private key: a server's, or a client's for
/// mutual TLS.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub cert: PemFile,
    /// The leaf certificate's private key.
    pub key: PemFile,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError {
        flag,
        reason: format!("cannot read {}: {error}", path.display()),
    })
}

/// Reads `path`, which must hold one or more PEM `CERTIFICATE` blocks.
pub(super) fn certificates(flag: &'static str, path: &Path) -> Result<PemFile, ConfigError> {
    let pem = read(flag, path)?;
    let refuse = |what: String| ConfigError {
        flag,
        reason: format!("{}: {what}", path.display()),
    };
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        }),
        Ok(_) => Err(refuse(
            "not a PEM certificate file (no `-----BEGIN CERTIFICATE-----` block)".to_owned(),
        )),
        Err(error) => Err(refuse(format!("not a readable PEM certificate file ({error})"))),
    }
}

/// Reads `path`, which must hold a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(super) fn private_key(flag: &'static str, path: &Path) -> Result<PemFile, ConfigError> {
    let pem = read(flag, path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(PemFile {
            path: path.to_path_buf(),
            pem,
        }),
        Err(error) => Err(ConfigError {
            flag,
            reason: format!(
                "{}: not a PEM private key (PKCS#8, PKCS#1 or SEC1 `-----BEGIN ... PRIVATE KEY-----` block; {error})",
                path.display()
            ),
        }),
    }
}

/// Both of a certificate flag and its key flag, or neither; the files read
/// and checked.
pub(super) fn identity(
    (cert_flag, cert): (&'static str, Option<&Path>),
    (key_flag, key): (&'static str, Option<&Path>),
) -> Result<Option<Identity>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(Identity {
            cert: certificates(cert_flag, cert)?,
            key: private_key(key_flag, key)?,
        })),
        (Some(_), None) => Err(ConfigError {
            flag: cert_flag,
            reason: format!("needs --{key_flag} (the certificate's private key) as well"),
        }),
        (None, Some(_)) => Err(ConfigError {
            flag: key_flag,
            reason: format!("needs --{cert_flag} (the certificate the key belongs to) as well"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Base64 of arbitrary bytes is enough: the PEM layer does not parse DER.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";

    #[test]
    fn files_are_checked_for_what_their_flag_needs() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        assert!(certificates("tls-cert", &cert).is_ok());
        assert!(private_key("tls-key", &key).is_ok());

        let error = certificates("tls-cert", &key).unwrap_err().to_string();
        assert!(error.starts_with("--tls-cert: "), "{error}");
        assert!(error.contains("key.pem: not a PEM certificate file"), "{error}");
        let error = private_key("tls-key", &cert).unwrap_err().to_string();
        assert!(error.contains("cert.pem: not a PEM private key"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = certificates("tls-ca", &missing).unwrap_err().to_string();
        assert!(
            error.starts_with("--tls-ca: cannot read ") && error.contains("missing.pem"),
            "{error}"
        );
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_key_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, CERT).unwrap();
        let error = identity(("tls-cert", Some(&cert)), ("tls-key", None))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "--tls-cert: needs --tls-key (the certificate's private key) as well"
        );
        let error = identity(("tls-cert", None), ("tls-key", Some(&cert)))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--tls-key: needs --tls-cert"), "{error}");
        assert!(identity(("tls-cert", None), ("tls-key", None)).unwrap().is_none());
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let file = PemFile {
            path: "k.pem".into(),
            pem: KEY.as_bytes().to_vec(),
        };
        assert!(!format!("{file:?}").contains("PRIVATE"));
    }
}
