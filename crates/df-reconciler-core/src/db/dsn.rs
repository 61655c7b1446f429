//! libpq connection strings: tokio-postgres parses only `sslmode=disable|prefer|require`
//! and rejects every other libpq TLS parameter, so [`parse_dsn`] takes `sslmode` and
//! `sslrootcert` out of the connection string before tokio-postgres sees it (the rest of
//! the string, password included, passes through byte for byte). What the modes mean is in
//! [`super::tls`].

use std::path::PathBuf;

use tokio_postgres::config::Host;

use crate::config::ConfigError;
use crate::error::describe_pg_error;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
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
    pub(crate) fn parse(value: &str) -> Option<SslMode> {
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

    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum RootCerts {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The system's trust store.
    System,
}

/// The DSN's TLS parameters, taken out of it by [`parse_dsn`]. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DsnTls {
    /// The effective mode: `disable` when every host is a Unix socket.
    pub sslmode: SslMode,
    /// The DSN's `sslrootcert`, which takes precedence over `[tls] ca_file`.
    pub sslrootcert: Option<RootCerts>,
}

/// Parses a libpq connection string (URL or `key=value` form) into tokio-postgres settings
/// with the negotiation of `sslmode` applied, and the TLS parameters tokio-postgres does
/// not know. Error messages name options, never their values (the password stays out).
pub(crate) fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, DsnTls), ConfigError> {
    let (rest, params) = take_tls_params(dsn);
    let mut pg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| ConfigError::BadDsn(describe_pg_error(&e)))?;

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
}
