//! TLS to PostgreSQL: the `sslmode` and CA a configuration asks for (in the URL or `[store]`), the one
//! connector every courier connection goes through, and the words for a TLS failure.
//!
//! OpenSSL (`postgres-openssl`) rather than rustls: rdkafka's `ssl` feature and reqwest's native-tls
//! already link the system OpenSSL, so courier keeps one TLS stack (one set of security updates, one
//! system CA store) and reads CA bundles exactly as libpq, which also uses OpenSSL, does.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require` and refuses `sslrootcert`, so both
//! are taken out of the URL here and carried out by the connector: what to verify is set per connection.

use std::path::{Path, PathBuf};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::error::SqlState;

use crate::config::{SslMode, StoreConfig};
use crate::error::StoreError;

/// The TLS side of every connection a store opens: the mode, what is verified, and the connector.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    verify: Verify,
    /// Whom the certificate must chain to, for messages: "the CA file /etc/..." or "the system CA store".
    trusted: String,
    pub(crate) connector: MakeTlsConnector,
}

/// What a handshake checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Encryption only (`prefer`, `require` without a CA file).
    Nothing,
    /// The certificate chains to a trusted CA (`verify-ca`, `require` with a CA file).
    Chain,
    /// ... and names the host connected to (`verify-full`).
    ChainAndHost,
}

impl Tls {
    /// Reads `sslmode` and `sslrootcert` from `config`'s URL and keys, refusing the two disagreeing, and
    /// builds the connector. Returns the URL without those two parameters, for tokio-postgres.
    pub(crate) fn from_config(config: &StoreConfig) -> Result<(Self, String), StoreError> {
        let (url, url_mode, url_root) = take_ssl_params(&config.url);
        let mode = agree(
            "ssl_mode",
            "sslmode",
            config.ssl_mode.map(|mode| mode.as_str().to_owned()),
            url_mode,
        )?;
        let mode = match mode {
            None => SslMode::default(),
            Some(text) => SslMode::parse(&text).ok_or_else(|| {
                StoreError::Config(format!(
                    "the store URL (DATABASE_URL / store.url) has sslmode={text}, which courier does not know; \
                     write one of disable, prefer, require, verify-ca, verify-full (e.g. ?sslmode=verify-full)"
                ))
            })?,
        };
        let root = agree(
            "ssl_root_cert",
            "sslrootcert",
            config
                .ssl_root_cert
                .as_ref()
                .map(|path| path.display().to_string()),
            url_root,
        )?
        .map(PathBuf::from);
        let file = root.filter(|path| path.as_os_str() != "system");
        let verify = match mode {
            SslMode::Disable | SslMode::Prefer => Verify::Nothing,
            SslMode::Require if file.is_none() => Verify::Nothing,
            SslMode::Require | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::ChainAndHost,
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(openssl_setup)?;
        let trusted = match &file {
            Some(path) => {
                builder.set_cert_store(ca_store(path)?);
                format!("the CA file {}", path.display())
            }
            // SslConnector::builder loaded OpenSSL's default verify paths: the system CA store.
            None => "the system CA store (no sslrootcert / store.ssl_root_cert given)".to_owned(),
        };
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |ssl, _host| {
            match verify {
                Verify::Nothing => {
                    ssl.set_verify(SslVerifyMode::NONE);
                    ssl.set_verify_hostname(false);
                }
                Verify::Chain => ssl.set_verify_hostname(false),
                Verify::ChainAndHost => {}
            }
            Ok(())
        });
        let tls = Self {
            mode,
            verify,
            trusted,
            connector,
        };
        Ok((tls, url))
    }

    /// tokio-postgres's own mode: whether to ask for TLS and whether to go on without it. What is
    /// verified is the connector's business.
    pub(crate) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self.mode {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }

    /// The error for a connection attempt that failed because of TLS, or `None` when TLS is not why.
    /// `detail` is the driver's whole error chain (the certificate verdict is at its end).
    pub(crate) fn explain(
        &self,
        target: &str,
        error: &tokio_postgres::Error,
        detail: &str,
    ) -> Option<StoreError> {
        let tls = |problem: String| {
            Some(StoreError::Tls {
                target: target.to_owned(),
                problem,
            })
        };
        if let Some(db) = error.as_db_error() {
            // PostgreSQL 12+ ends a pg_hba refusal with "no encryption" when only hostssl lines match.
            let refused_plaintext = *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && (db.message().contains("no encryption") || db.message().contains("SSL off"));
            if refused_plaintext && self.mode == SslMode::Disable {
                return tls(format!(
                    "the server refused an unencrypted connection ({}): it accepts this client only over TLS, \
                     and sslmode is disable. Set sslmode=verify-full with sslrootcert naming the server's CA \
                     (store.ssl_mode / store.ssl_root_cert, or ?sslmode=verify-full&sslrootcert=/path/ca.pem in \
                     the URL), or at least sslmode=require",
                    db.message()
                ));
            }
            return None;
        }
        if detail.contains("server does not support TLS") {
            return tls(format!(
                "sslmode is {} but the server does not offer TLS (its `ssl` setting is off). Turn on ssl on \
                 the server (ssl = on with ssl_cert_file / ssl_key_file), or, on a network you trust, set \
                 sslmode=prefer",
                self.mode
            ));
        }
        // OpenSSL 3 writes "hostname mismatch", 1.1 "Hostname mismatch".
        let lower = detail.to_ascii_lowercase();
        if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") {
            return tls(format!(
                "the server's certificate is trusted but does not name the host courier connects to \
                 (sslmode=verify-full; {detail}). Connect with a host name that is in the certificate's \
                 subjectAltName (managed services name theirs, e.g. the endpoint they give you, not an IP), \
                 or reissue the certificate for this name"
            ));
        }
        if detail.contains("certificate verify failed") {
            return tls(format!(
                "the server's certificate is not trusted: it does not chain to {} ({detail}). Point \
                 sslrootcert / store.ssl_root_cert at the PEM file of the CA that signed the server's \
                 certificate (managed PostgreSQL providers publish theirs), and check it has not expired",
                self.trusted
            ));
        }
        None
    }

    /// `verify-full against the CA file ...`, for the lines that say how courier connected.
    pub(crate) fn describe(&self) -> String {
        match self.verify {
            Verify::Nothing => format!("sslmode {} (certificate not verified)", self.mode),
            Verify::Chain => format!(
                "sslmode {} (certificate chain verified against {})",
                self.mode, self.trusted
            ),
            Verify::ChainAndHost => format!(
                "sslmode {} (certificate and host name verified against {})",
                self.mode, self.trusted
            ),
        }
    }
}

/// `store.KEY` and the URL's `PARAM` may each be unset; set in both, they must agree.
fn agree(
    key: &str,
    param: &str,
    from_config: Option<String>,
    from_url: Option<String>,
) -> Result<Option<String>, StoreError> {
    match (from_config, from_url) {
        (Some(config), Some(url)) if config != url => Err(StoreError::Config(format!(
            "store.{key} is {config:?} but the store URL (DATABASE_URL / store.url) has {param}={url}: \
             courier will not guess which one you meant; remove one of them or make them agree"
        ))),
        (config, url) => Ok(config.or(url)),
    }
}

/// A certificate store holding only the CAs in the PEM file at `path`: naming a CA means trusting that
/// CA, not it and every public one.
fn ca_store(path: &Path) -> Result<openssl::x509::store::X509Store, StoreError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| {
        StoreError::Config(format!(
            "cannot read the store's CA file {shown} (sslrootcert / store.ssl_root_cert): {e}; point it at the \
             PEM file of the CA that signed the server's certificate"
        ))
    })?;
    let certificates = X509::stack_from_pem(&pem).unwrap_or_default();
    if certificates.is_empty() {
        return Err(StoreError::Config(format!(
            "the store's CA file {shown} (sslrootcert / store.ssl_root_cert) holds no PEM certificate \
             (-----BEGIN CERTIFICATE-----); point it at the CA's certificate, not a key or a DER file"
        )));
    }
    let mut store = X509StoreBuilder::new().map_err(openssl_setup)?;
    for certificate in certificates {
        store.add_cert(certificate).map_err(openssl_setup)?;
    }
    Ok(store.build())
}

fn openssl_setup(error: openssl::error::ErrorStack) -> StoreError {
    StoreError::Config(format!(
        "cannot set up TLS for the store: OpenSSL said {error}; is the system's OpenSSL (libssl) installed \
         and working?"
    ))
}

/// `url` without `sslmode` and `sslrootcert`, and their (percent-decoded) values. Reads both URLs
/// (`postgres://...?sslmode=x`) and libpq's `key=value` form.
fn take_ssl_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, &percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> StoreConfig {
        StoreConfig::new(url)
    }

    #[test]
    fn ssl_parameters_leave_the_url_and_the_rest_stays() {
        let (url, mode, root) = take_ssl_params(
            "postgres://u:p@db:5432/c?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(url, "postgres://u:p@db:5432/c?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (url, mode, _) = take_ssl_params("postgres://u:p@db/c?sslmode=require");
        assert_eq!(
            (url.as_str(), mode.as_deref()),
            ("postgres://u:p@db/c", Some("require"))
        );
        let (url, mode, root) =
            take_ssl_params("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem");
        assert_eq!(url, "host=db user=u");
        assert_eq!(
            (mode.as_deref(), root.as_deref()),
            (Some("verify-ca"), Some("/ca.pem"))
        );
    }

    #[test]
    fn the_default_is_prefer_without_verification() {
        let (tls, url) = Tls::from_config(&config("postgres://u:p@db/c")).expect("valid");
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.verify, Verify::Nothing);
        assert_eq!(url, "postgres://u:p@db/c");
    }

    #[test]
    fn url_and_config_must_agree() {
        let mut c = config("postgres://u:p@db/c?sslmode=require");
        c.ssl_mode = Some(SslMode::VerifyFull);
        let message = Tls::from_config(&c).err().expect("must refuse").to_string();
        assert!(
            message.contains("store.ssl_mode is \"verify-full\"")
                && message.contains("sslmode=require"),
            "{message}"
        );
        c.ssl_mode = Some(SslMode::Require);
        assert!(Tls::from_config(&c).is_ok());
    }

    #[test]
    fn an_unknown_sslmode_is_refused_naming_the_choices() {
        let message = Tls::from_config(&config("postgres://u:p@db/c?sslmode=verify_full"))
            .err()
            .expect("must refuse")
            .to_string();
        assert!(
            message.contains("sslmode=verify_full") && message.contains("verify-full"),
            "{message}"
        );
    }

    #[test]
    fn require_with_a_ca_file_verifies_the_chain_as_libpq_does() {
        let dir = std::env::temp_dir().join(format!("courier-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate").expect("write");
        let url = format!(
            "postgres://u:p@db/c?sslmode=require&sslrootcert={}",
            ca.display()
        );
        let message = Tls::from_config(&config(&url))
            .err()
            .expect("a file without a certificate is refused")
            .to_string();
        assert!(message.contains("holds no PEM certificate"), "{message}");
        let missing = format!(
            "postgres://u:p@db/c?sslmode=verify-ca&sslrootcert={}/none.pem",
            dir.display()
        );
        let message = Tls::from_config(&config(&missing))
            .err()
            .expect("a missing file is refused")
            .to_string();
        assert!(
            message.contains("cannot read the store's CA file"),
            "{message}"
        );
        let (tls, _) = Tls::from_config(&config(
            "postgres://u:p@db/c?sslmode=require&sslrootcert=system",
        ))
        .expect("valid");
        assert_eq!(
            tls.verify,
            Verify::Nothing,
            "system is not a file: require stays require"
        );
        let (tls, _) =
            Tls::from_config(&config("postgres://u:p@db/c?sslmode=verify-full")).expect("valid");
        assert_eq!(tls.verify, Verify::ChainAndHost);
        std::fs::remove_dir_all(&dir).ok();
    }
}
