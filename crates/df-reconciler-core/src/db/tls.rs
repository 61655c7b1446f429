//! TLS of the database connections: libpq's `sslmode` on a pure-Rust stack (rustls with
//! the `ring` provider; no OpenSSL, no aws-lc).
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require` and rejects every other
//! libpq TLS parameter, so [`super::dsn::parse_dsn`] takes `sslmode` and `sslrootcert` out of the
//! connection string before tokio-postgres sees it (the rest of the string, password
//! included, passes through byte for byte) and [`connector`] builds the matching rustls
//! client. What each mode means, as in libpq:
//!
//! | `sslmode` | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | - | - |
//! | `allow`, `prefer` (default) | when the server offers TLS | only against a configured CA | no |
//! | `require` | yes | only against a configured CA | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! "A configured CA" is `sslrootcert` in the DSN, else `[tls] ca_file`. `verify-ca` and
//! `verify-full` without either trust the system store (`SSL_CERT_FILE`, `SSL_CERT_DIR`,
//! or the distribution's bundle, via rustls-native-certs): unlike libpq, which fails
//! without `~/.postgresql/root.crt`, a daemon has no home directory worth reading.
//! `sslrootcert=system` (libpq 16) asks for the system store explicitly and, as in libpq,
//! implies `verify-full` and refuses weaker modes. `allow` is treated as `prefer`.
//! Connections over Unix sockets never use TLS (PostgreSQL does not offer it there; libpq
//! ignores `sslmode` for them too).
//!
//! A mode that checks nothing still checks that the handshake was signed by the key of
//! the certificate the server presented, so channel binding (`channel_binding=require`)
//! keeps its meaning.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::dsn::{DsnTls, RootCerts, SslMode};
use crate::config::{ConfigError, TlsConfig};

/// How the server's certificate is checked, from the mode and the trust settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verification {
    /// No TLS (`sslmode=disable`, Unix sockets).
    Off,
    /// Encrypted, the certificate not checked (libpq's `prefer`/`require` without a CA).
    EncryptOnly,
    /// The chain to a trusted CA is checked, the host name is not.
    Chain(RootCerts),
    /// The chain and the host name (or IP address) are checked.
    Full(RootCerts),
}

/// Decides the [`Verification`] of a connection; see the module docs for the rules.
pub(crate) fn verification(dsn: &DsnTls, cfg: &TlsConfig) -> Verification {
    let configured = dsn
        .sslrootcert
        .clone()
        .or_else(|| cfg.ca_file.clone().map(RootCerts::File));
    match dsn.sslmode {
        SslMode::Disable => Verification::Off,
        SslMode::Allow | SslMode::Prefer | SslMode::Require => match configured {
            Some(roots) => Verification::Chain(roots),
            None => Verification::EncryptOnly,
        },
        SslMode::VerifyCa => Verification::Chain(configured.unwrap_or(RootCerts::System)),
        SslMode::VerifyFull => Verification::Full(configured.unwrap_or(RootCerts::System)),
    }
}

/// The TLS connector of the pool, for the verification [`verification`] decides. Reads the
/// CA file (or the system store) once, now, so a missing file fails at start, by name.
pub(crate) fn connector(dsn: &DsnTls, cfg: &TlsConfig) -> Result<MakeRustlsConnect, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let origin = if dsn.sslrootcert.is_some() {
        "sslrootcert"
    } else {
        "tls.ca_file"
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    let builder = match verification(dsn, cfg) {
        Verification::Off | Verification::EncryptOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoHostnameCheck {
                roots: None,
                algorithms,
            })),
        Verification::Chain(roots) => {
            let roots = Arc::new(root_store(&roots, origin)?);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoHostnameCheck {
                    roots: Some(roots),
                    algorithms,
                }))
        }
        Verification::Full(roots) => {
            let roots = Arc::new(root_store(&roots, origin)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ConfigError::Tls(e.to_string()))?;
            builder.with_webpki_verifier(verifier)
        }
    };
    Ok(MakeRustlsConnect::new(builder.with_no_client_auth()))
}

/// The trusted CAs; an empty store is an error, never "trust nothing, fail later".
fn root_store(source: &RootCerts, origin: &str) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    match source {
        RootCerts::File(path) => {
            for cert in pem_certificates(path, origin)? {
                store.add(cert).map_err(|e| {
                    ConfigError::Tls(format!(
                        "{origin} {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(ConfigError::Tls(format!(
                    "no trusted CA certificate in the system store{why}; set tls.ca_file (or sslrootcert in the DSN)"
                )));
            }
        }
    }
    Ok(store)
}

fn pem_certificates(
    path: &Path,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |e: &dyn std::fmt::Display| {
        ConfigError::Tls(format!("cannot read {origin} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The verifiers that do not compare the certificate's name with the host (libpq's
/// `prefer`/`require` without a CA, and `verify-ca`). The handshake signatures are always
/// checked against the presented certificate.
/// - `roots: None`: encryption against passive eavesdroppers only, as libpq does it.
/// - `roots: Some`: `verify-ca`, the certificate must chain to a trusted CA and be valid now.
#[derive(Debug)]
struct NoHostnameCheck {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoHostnameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::dsn::parse_dsn;
    use super::*;

    fn parse(dsn: &str) -> (tokio_postgres::Config, DsnTls) {
        parse_dsn(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"))
    }

    #[test]
    fn libpq_modes_map_to_negotiation_and_verification() {
        use tokio_postgres::config::SslMode as Pg;
        let none = TlsConfig::default();
        let ca = TlsConfig {
            ca_file: Some("/etc/ca.pem".into()),
        };
        let file = RootCerts::File("/etc/ca.pem".into());
        for (mode, negotiation, without_ca, with_ca) in [
            ("disable", Pg::Disable, Verification::Off, Verification::Off),
            (
                "allow",
                Pg::Prefer,
                Verification::EncryptOnly,
                Verification::Chain(file.clone()),
            ),
            (
                "prefer",
                Pg::Prefer,
                Verification::EncryptOnly,
                Verification::Chain(file.clone()),
            ),
            (
                "require",
                Pg::Require,
                Verification::EncryptOnly,
                Verification::Chain(file.clone()),
            ),
            (
                "verify-ca",
                Pg::Require,
                Verification::Chain(RootCerts::System),
                Verification::Chain(file.clone()),
            ),
            (
                "verify-full",
                Pg::Require,
                Verification::Full(RootCerts::System),
                Verification::Full(file.clone()),
            ),
        ] {
            let (pg, tls) = parse(&format!("host=db.internal sslmode={mode}"));
            assert_eq!(pg.get_ssl_mode(), negotiation, "{mode}");
            assert_eq!(verification(&tls, &none), without_ca, "{mode}");
            assert_eq!(verification(&tls, &ca), with_ca, "{mode}");
        }
        let (pg, tls) = parse("host=db.internal");
        assert_eq!(pg.get_ssl_mode(), Pg::Prefer, "libpq's default");
        assert_eq!(verification(&tls, &none), Verification::EncryptOnly);
    }

    #[test]
    fn the_tls_section_loads_and_rejects_unknown_keys() {
        use std::io::Write;
        let load = |toml: &str| {
            let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
            file.write_all(toml.as_bytes()).unwrap();
            crate::config::Config::load_from(Some(file.path()), Vec::new(), &[])
        };
        let cfg = load("[tls]\nca_file = \"/etc/ca.pem\"\n").unwrap();
        assert_eq!(cfg.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        let err = load("[tls]\ncafile = \"/etc/ca.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cafile"), "{err}");
        let env = [(
            "DF_RECONCILER__TLS__CA_FILE".to_owned(),
            "/x.pem".to_owned(),
        )];
        let cfg = crate::config::Config::load_from(None, env, &[]).unwrap();
        assert_eq!(cfg.tls.ca_file, Some(PathBuf::from("/x.pem")));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dsn = DsnTls {
            sslmode: SslMode::VerifyFull,
            sslrootcert: None,
        };
        let missing = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let err = connector(&dsn, &missing).err().unwrap().to_string();
        assert!(err.contains("tls.ca_file /nonexistent/ca.pem"), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let cfg = TlsConfig {
            ca_file: Some(empty.path().into()),
        };
        let err = connector(&dsn, &cfg).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_pem_ca_file_builds_a_connector() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, ca.pem().as_bytes()).unwrap();
        let cfg = TlsConfig {
            ca_file: Some(file.path().into()),
        };
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let dsn = DsnTls {
                sslmode: mode,
                sslrootcert: None,
            };
            assert!(connector(&dsn, &cfg).is_ok(), "{mode:?}");
        }
    }
}
