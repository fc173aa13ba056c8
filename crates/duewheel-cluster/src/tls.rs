//! TLS to PostgreSQL: the mode ([`Tls`]), the libpq options the `postgres`
//! crate does not parse (`sslmode` beyond `disable`/`prefer`/`require`,
//! `sslrootcert`), and the rustls connector (feature `tls`, `ring`
//! provider).
//!
//! Invariant: a connection is plain only when no TLS was asked for; a TLS
//! mode always verifies the server's certificate chain *and* its host name
//! against the configured roots (libpq's `verify-full`), and anything it
//! cannot verify is an [`OpenError`], never a fallback to plain text. libpq's
//! `require` (encrypt, trust any certificate) is deliberately read as
//! verify-full too: an unverified certificate protects against nobody who
//! can intercept the connection.

use crate::error::OpenError;
use std::path::{Path, PathBuf};

/// How a store's connections are secured: [`StoreConfig::tls`](crate::StoreConfig::tls),
/// or `sslmode` / `sslrootcert` in the DSN (the setter wins).
///
/// ```no_run
/// use duewheel_cluster::{StoreConfig, Tls};
///
/// let store = StoreConfig::new("host=db.internal user=duewheel dbname=payments")
///     .tls(Tls::Require { root_cert: "/etc/duewheel/ca.pem".into() })
///     .open()?;
/// # Ok::<(), duewheel_cluster::OpenError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tls {
    /// Plain connections (`sslmode=disable`, or no `sslmode`): a Unix
    /// socket or a trusted network only.
    Disable,
    /// TLS, refusing a server whose certificate does not chain to a root in
    /// `root_cert` (a PEM file of one or more CA certificates) or does not
    /// name the host connected to. `sslmode=require`, `verify-ca` or
    /// `verify-full` in the DSN; the roots from `sslrootcert`, default
    /// `~/.postgresql/root.crt` as in libpq. Needs the `tls` feature.
    Require {
        /// PEM file of the certificate authorities to trust.
        root_cert: PathBuf,
    },
}

/// A DSN with the TLS options taken out (the `postgres` crate refuses
/// `sslrootcert` and the `verify-*` modes), and what they said.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SplitDsn {
    /// The rest of the DSN, for `postgres::Config`'s parser.
    pub(crate) rest: String,
    /// `sslmode`, if given.
    pub(crate) sslmode: Option<String>,
    /// `sslrootcert`, if given.
    pub(crate) sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a key=value DSN or a
/// `postgres://` / `postgresql://` URL.
pub(crate) fn split_dsn(dsn: &str) -> Result<SplitDsn, String> {
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return Ok(split_url(dsn));
    }
    let mut out = SplitDsn::default();
    let mut rest = Vec::new();
    for (key, value) in pairs(dsn)? {
        match key.as_str() {
            "sslmode" => out.sslmode = Some(value),
            "sslrootcert" => out.sslrootcert = Some(value),
            _ => rest.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    out.rest = rest.join(" ");
    Ok(out)
}

/// The key=value pairs of a libpq connection string (values bare or
/// single-quoted with `\` escapes).
fn pairs(dsn: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("DSN: expected `=` after `{key}`"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("DSN: unterminated quote")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("DSN: unterminated quote".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("DSN: trailing backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// The URL form: `sslmode` and `sslrootcert` are query parameters.
fn split_url(dsn: &str) -> SplitDsn {
    let Some((base, query)) = dsn.split_once('?') else {
        return SplitDsn {
            rest: dsn.to_owned(),
            ..SplitDsn::default()
        };
    };
    let mut out = SplitDsn::default();
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key {
            "sslmode" => out.sslmode = Some(percent_decode(value)),
            "sslrootcert" => out.sslrootcert = Some(percent_decode(value)),
            _ => kept.push(param),
        }
    }
    out.rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escape = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| (hex(bytes[i + 1]), hex(bytes[i + 2])));
        if let Some((Some(h), Some(l))) = escape {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mode from the DSN's options (`setter` wins), with libpq's default
/// root file when `sslrootcert` is absent.
pub(crate) fn resolve(
    setter: Option<&Tls>,
    split: &SplitDsn,
    home: Option<PathBuf>,
) -> Result<Tls, OpenError> {
    if let Some(tls) = setter {
        return Ok(tls.clone());
    }
    let wants_tls = match split.sslmode.as_deref() {
        Some("disable") => false,
        // libpq's default, `prefer`, tries TLS first; here a plain
        // connection stays plain unless roots were given for it.
        None | Some("allow" | "prefer") => split.sslrootcert.is_some(),
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(OpenError::InvalidConfig(format!(
                "DSN: sslmode={other:?}: use disable, require, verify-ca or verify-full"
            )));
        }
    };
    if !wants_tls {
        return Ok(Tls::Disable);
    }
    let root_cert = match &split.sslrootcert {
        Some(path) => PathBuf::from(path),
        None => home
            .map(|h| h.join(".postgresql").join("root.crt"))
            .ok_or_else(|| {
                OpenError::InvalidConfig(
                    "sslmode asks for TLS but there is no sslrootcert (and no HOME for ~/.postgresql/root.crt)".into(),
                )
            })?,
    };
    Ok(Tls::Require { root_cert })
}

/// Connects with `tls`.
pub(crate) fn connect(pg: &mut postgres::Config, tls: &Tls) -> Result<postgres::Client, OpenError> {
    match tls {
        Tls::Disable => {
            pg.ssl_mode(postgres::config::SslMode::Disable);
            pg.connect(postgres::NoTls).map_err(OpenError::Connect)
        }
        Tls::Require { root_cert } => connect_tls(pg, root_cert),
    }
}

#[cfg(feature = "tls")]
fn connect_tls(pg: &mut postgres::Config, root_cert: &Path) -> Result<postgres::Client, OpenError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad =
        |m: String| OpenError::InvalidConfig(format!("sslrootcert {}: {m}", root_cert.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(root_cert).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    // `ring`'s provider has no post-quantum key exchange (hence the
    // deprecation); aws-lc-rs has, but needs cmake to build.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    pg.ssl_mode(postgres::config::SslMode::Require);
    pg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        .map_err(OpenError::Connect)
}

#[cfg(not(feature = "tls"))]
fn connect_tls(_: &mut postgres::Config, _: &Path) -> Result<postgres::Client, OpenError> {
    Err(OpenError::InvalidConfig(
        "TLS was asked for (sslmode or StoreConfig::tls) but this build lacks the `tls` feature of duewheel-cluster".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_a_key_value_dsn() {
        let split = split_dsn(
            "host=localhost port=5432 sslmode=verify-full sslrootcert='/etc/my ca.pem' user=u password='it\\'s'",
        )
        .unwrap();
        assert_eq!(split.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(split.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        let pg: postgres::Config = split.rest.parse().unwrap();
        assert_eq!(pg.get_user(), Some("u"));
        assert_eq!(pg.get_password(), Some(&b"it's"[..]));
        assert_eq!(pg.get_ports(), &[5432]);
    }

    #[test]
    fn tls_options_are_taken_out_of_a_url() {
        let split =
            split_dsn("postgresql://u@db:5432/payments?sslrootcert=%2Fetc%2Fca.pem&application_name=x&sslmode=require")
                .unwrap();
        assert_eq!(split.sslmode.as_deref(), Some("require"));
        assert_eq!(split.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            split.rest,
            "postgresql://u@db:5432/payments?application_name=x"
        );
    }

    #[test]
    fn bad_dsns_are_errors_not_panics() {
        assert!(split_dsn("host").is_err());
        assert!(split_dsn("host='x").is_err());
        assert!(split_dsn("host=x\\").is_err());
    }

    #[test]
    fn the_mode_follows_sslmode_and_the_setter_wins() {
        let split = |dsn| split_dsn(dsn).unwrap();
        let home = || Some(PathBuf::from("/home/me"));
        assert_eq!(
            resolve(None, &split("host=x"), home()).unwrap(),
            Tls::Disable
        );
        assert_eq!(
            resolve(None, &split("sslmode=disable sslrootcert=/a"), home()).unwrap(),
            Tls::Disable
        );
        assert_eq!(
            resolve(None, &split("sslmode=require"), home()).unwrap(),
            Tls::Require {
                root_cert: "/home/me/.postgresql/root.crt".into()
            }
        );
        assert_eq!(
            resolve(
                None,
                &split("sslmode=verify-ca sslrootcert=/ca.pem"),
                home()
            )
            .unwrap(),
            Tls::Require {
                root_cert: "/ca.pem".into()
            }
        );
        assert!(matches!(
            resolve(None, &split("sslmode=bogus"), home()),
            Err(OpenError::InvalidConfig(_))
        ));
        assert_eq!(
            resolve(Some(&Tls::Disable), &split("sslmode=require"), home()).unwrap(),
            Tls::Disable
        );
    }
}
