//! TLS of the database connections: libpq's `sslmode` on a pure-Rust stack (rustls with
//! the `ring` provider; no OpenSSL, no aws-lc).
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require` and rejects every other
//! libpq TLS parameter, so [`parse_dsn`] takes `sslmode` and `sslrootcert` out of the
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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, TlsConfig};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// Treated as [`SslMode::Prefer`].
    Allow,
    /// libpq's (and tokio-postgres') default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether to insist on it.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The system's trust store.
    System,
}

/// The DSN's TLS parameters, taken out of it by [`parse_dsn`]. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsnTls {
    /// The effective mode: `disable` when every host is a Unix socket.
    pub sslmode: SslMode,
    /// The DSN's `sslrootcert`, which takes precedence over `[tls] ca_file`.
    pub sslrootcert: Option<RootCerts>,
}

/// How the server's certificate is checked, from the mode and the trust settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
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
pub fn verification(dsn: &DsnTls, cfg: &TlsConfig) -> Verification {
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

/// Parses a libpq connection string (URL or `key=value` form) into tokio-postgres settings
/// with the negotiation of `sslmode` applied, and the TLS parameters tokio-postgres does
/// not know. Error messages name options, never their values (the password stays out).
pub fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, DsnTls), ConfigError> {
    let (rest, params) = take_tls_params(dsn);
    let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        ConfigError::BadDsn(crate::error::describe_pg_error(&e))
    })?;

    let explicit_mode = match params.sslmode.as_deref() {
        None => None,
        Some(value) => Some(SslMode::parse(value).ok_or_else(|| {
            ConfigError::BadDsn(format!(
                "invalid sslmode {value:?} (expected disable, allow, prefer, require, verify-ca or verify-full)"
            ))
        })?),
    };
    let sslrootcert = match params.sslrootcert.as_deref() {
        None | Some("") => None,
        Some("system") => Some(RootCerts::System),
        Some(path) => Some(RootCerts::File(PathBuf::from(path))),
    };
    let mut sslmode = match (explicit_mode, &sslrootcert) {
        // libpq 16: the system store is only safe with host-name checks.
        (None, Some(RootCerts::System)) => SslMode::VerifyFull,
        (Some(mode), Some(RootCerts::System)) if mode != SslMode::VerifyFull => {
            return Err(ConfigError::BadDsn(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full)",
                mode.as_str()
            )))
        }
        (mode, _) => mode.unwrap_or_default(),
    };
    let hosts = pg.get_hosts();
    let unix_only = !hosts.is_empty()
        && pg.get_hostaddrs().is_empty()
        && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)));
    if unix_only {
        sslmode = SslMode::Disable;
    }
    pg.ssl_mode(sslmode.negotiation());
    Ok((
        pg,
        DsnTls {
            sslmode,
            sslrootcert,
        },
    ))
}

/// The TLS connector of the pool, for the verification [`verification`] decides. Reads the
/// CA file (or the system store) once, now, so a missing file fails at start, by name.
pub fn connector(dsn: &DsnTls, cfg: &TlsConfig) -> Result<MakeRustlsConnect, ConfigError> {
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

/// What an operator should look at after a TLS failure, appended to connection errors;
/// empty when `message` is not one.
pub fn hint(message: &str) -> &'static str {
    if message.contains("invalid peer certificate") {
        " (the server's certificate is not trusted: check sslmode and the CA in tls.ca_file or the DSN's sslrootcert)"
    } else if message.contains("server does not support TLS") {
        " (sslmode requires TLS: enable ssl on the server, or lower sslmode)"
    } else {
        ""
    }
}

/// The TLS parameters found in a DSN (raw values, percent-decoded for URLs).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Parameter names taken out of the DSN before tokio-postgres parses it.
const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `sslmode` and `sslrootcert` off a DSN; the last occurrence wins, as in libpq.
/// Everything else is returned unchanged. A DSN this cannot tokenize is returned whole, for
/// tokio-postgres to reject with its own message.
fn take_tls_params(dsn: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let mut keep = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => params.sslmode = Some(value),
            "sslrootcert" => params.sslrootcert = Some(value),
            _ => return true,
        }
        false
    };
    let rest = match url_query(dsn) {
        Some((head, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| match pair.split_once('=') {
                    Some((k, v)) if TAKEN.contains(&percent_decode(k).as_str()) => {
                        keep(&percent_decode(k), percent_decode(v))
                    }
                    _ => true,
                })
                .collect();
            if kept.is_empty() {
                head.to_owned()
            } else {
                format!("{head}?{}", kept.join("&"))
            }
        }
        None if is_url(dsn) => dsn.to_owned(),
        None => match key_value_params(dsn) {
            Some(found) => {
                let mut rest = String::with_capacity(dsn.len());
                let mut copied_up_to = 0;
                for p in found {
                    if !keep(p.key, p.value) {
                        rest.push_str(&dsn[copied_up_to..p.start]);
                        copied_up_to = p.end;
                    }
                }
                rest.push_str(&dsn[copied_up_to..]);
                rest
            }
            None => dsn.to_owned(),
        },
    };
    (rest, params)
}

fn is_url(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")
}

/// `(everything before '?', the query)` of a URL DSN with a query. Like tokio-postgres, the
/// user info ends at the first '@', so a '?' in the password is not taken for the query.
fn url_query(dsn: &str) -> Option<(&str, &str)> {
    let prefix = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| dsn.starts_with(p))?;
    let after_user_info = dsn[prefix.len()..]
        .find('@')
        .map_or(prefix.len(), |at| prefix.len() + at + 1);
    let q = after_user_info + dsn[after_user_info..].find('?')?;
    Some((&dsn[..q], &dsn[q + 1..]))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `key = value` of a libpq key/value DSN, with the byte span it occupies.
struct KeyValue<'a> {
    key: &'a str,
    value: String,
    start: usize,
    end: usize,
}

/// Tokenizes a key/value DSN the way libpq (and tokio-postgres) does: keywords up to
/// whitespace or '=', values bare (up to whitespace) or single-quoted, backslash escapes
/// in both. None when the string is malformed.
fn key_value_params(s: &str) -> Option<Vec<KeyValue<'_>>> {
    let mut it = s.char_indices().peekable();
    let mut found = Vec::new();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Some(found);
        };
        while it
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key_end = it.peek().map_or(s.len(), |&(i, _)| i);
        if key_end == start {
            return None;
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()? {
                    (_, '\'') => break,
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        found.push(KeyValue {
            key: &s[start..key_end],
            value,
            start,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
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
    fn url_dsns_lose_only_the_tls_parameters() {
        let (pg, tls) = parse(
            "postgres://rec:p%3Fss@db.internal:6432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%201.pem",
        );
        assert_eq!(pg.get_password(), Some(&b"p?ss"[..]));
        assert_eq!(pg.get_dbname(), Some("app"));
        assert_eq!(pg.get_ports(), [6432]);
        assert_eq!(pg.get_application_name(), Some("x"));
        assert_eq!(tls.sslmode, SslMode::VerifyFull);
        assert_eq!(
            tls.sslrootcert,
            Some(RootCerts::File("/etc/ca 1.pem".into()))
        );
        // A '?' inside the password is not the query.
        let (pg, tls) = parse("postgresql://rec:a?b@db/app?sslmode=verify-ca");
        assert_eq!(pg.get_password(), Some(&b"a?b"[..]));
        assert_eq!(tls.sslmode, SslMode::VerifyCa);
        let (rest, params) = take_tls_params("postgres://db/app?sslmode=require");
        assert_eq!(rest, "postgres://db/app");
        assert_eq!(params.sslmode.as_deref(), Some("require"));
    }

    #[test]
    fn key_value_dsns_lose_only_the_tls_parameters() {
        let dsn = r"host=db.internal  password='it\'s a secret' sslmode = verify-full dbname=app sslrootcert='/etc/my ca.pem'";
        let (rest, params) = take_tls_params(dsn);
        assert_eq!(
            rest,
            r"host=db.internal  password='it\'s a secret'  dbname=app "
        );
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        // The last occurrence wins, as in libpq.
        let (_, tls) = parse("host=db sslmode=disable sslmode=verify-ca");
        assert_eq!(tls.sslmode, SslMode::VerifyCa);
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let (pg, tls) = parse("host=/var/run/postgresql dbname=app sslmode=verify-full");
        assert_eq!(tls.sslmode, SslMode::Disable);
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        let (_, tls) = parse("host=db sslrootcert=system");
        assert_eq!(tls.sslmode, SslMode::VerifyFull);
        assert_eq!(tls.sslrootcert, Some(RootCerts::System));
        let err = parse_dsn("host=db sslrootcert=system sslmode=require")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert=system"), "{err}");
    }

    #[test]
    fn errors_name_the_option_never_the_secret() {
        let err = parse_dsn("host=db password=hunter2 sslmode=verify-hunter")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_dsn("postgres://u:hunter2@db/app?sslcert=/x.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslcert"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
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
