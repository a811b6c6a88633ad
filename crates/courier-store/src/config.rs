//! Store configuration and the client-aligned timeouts.
//!
//! Incident 8's amplifier was a database that kept transactions and locks for hours after their clients
//! had given up. Here every server-side limit is derived from the client's own deadline and set on every
//! connection, and [`Timeouts::validate`] refuses a configuration where the server would outlast the
//! client.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// How to reach the store and how long to wait for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// PostgreSQL URL, e.g. `postgres://courier:courier@127.0.0.1:54329/courier`.
    pub url: String,
    /// Most connections this process opens. Each delivery task uses one only for the milliseconds of a
    /// store call, so a handful serves dozens of tasks.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Shown in `pg_stat_activity.application_name`, so an operator can tell courier's sessions apart.
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// TLS to the server, as libpq's `sslmode`. Also read from the URL (`?sslmode=verify-full`); set in
    /// both places, they must agree. Unset in both: `prefer`, libpq's default.
    #[serde(default)]
    pub ssl_mode: Option<SslMode>,
    /// PEM file of the CA(s) that signed the server's certificate, as libpq's `sslrootcert` (also read
    /// from the URL). Only these CAs are trusted; `"system"` trusts the system's CA store. Unset,
    /// `verify-ca` and `verify-full` trust the system's CA store.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// How courier encrypts and authenticates its connections to PostgreSQL: libpq's `sslmode` values and
/// meanings (`allow` is left out: it only adds a plaintext first attempt that `prefer` makes pointless).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS. A server that only accepts TLS refuses the login.
    Disable,
    /// TLS when the server offers it, plaintext otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (encryption without authentication), unless
    /// a CA file is given, which makes it `verify-ca` (as libpq does).
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA; any host name is accepted.
    VerifyCa,
    /// TLS, a trusted certificate, and the host courier connects to must be named in it.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling, as written in a URL or the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Reads the libpq spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Disable,
            Self::Prefer,
            Self::Require,
            Self::VerifyCa,
            Self::VerifyFull,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == text)
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_pool_size() -> usize {
    16
}

fn default_application_name() -> String {
    "courier".to_owned()
}

impl StoreConfig {
    /// A configuration with default timeouts for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: default_pool_size(),
            application_name: default_application_name(),
            ssl_mode: None,
            ssl_root_cert: None,
            timeouts: Timeouts::default(),
        }
    }

    /// Checks every rule a running store depends on. Called before anything connects.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.pool_size == 0 {
            return Err(StoreError::Config(
                "store.pool_size is 0: set it to at least 1 (16 suits most workers)".into(),
            ));
        }
        self.timeouts.validate()
    }
}

/// Client deadline and the server-side limits derived from it. Durations are written like `4500ms` or
/// `10s` in TOML.
///
/// The rule: the server gives up before the client does. A lock wait fails fast and visibly
/// (`lock_timeout`) instead of silently at the client's deadline; a statement is cancelled by the server
/// (`statement_timeout`) before the client abandons it; a transaction whose client vanished releases its
/// locks within `idle_in_transaction_session_timeout`; a backend whose client left while it waited on a
/// lock is ended within `client_connection_check_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// The client's deadline around every store call (tokio timeout). A call that outlives it is abandoned
    /// and its connection discarded.
    #[serde(with = "humantime_serde")]
    pub client_deadline: Duration,
    /// Server cancels a statement after this; must be below `client_deadline`.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Server gives up waiting for a lock after this; must be below `statement_timeout`.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// `lock_timeout` used by the migration runner's DDL, which then retries with backoff.
    #[serde(with = "humantime_serde")]
    pub ddl_lock_timeout: Duration,
    /// The transaction budget: the server ends a session idle inside a transaction after this, freeing
    /// its locks when its client froze or vanished.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_session_timeout: Duration,
    /// How often a busy backend checks that its client is still there (PostgreSQL 14+).
    #[serde(with = "humantime_serde")]
    pub client_connection_check_interval: Duration,
    /// Server-side TCP keepalive idle time before the first probe.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalives_idle: Duration,
    /// Server-side TCP keepalive probe interval.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalives_interval: Duration,
    /// Server-side TCP keepalive probes before the peer is declared dead.
    pub tcp_keepalives_count: u32,
    /// Server drops a connection whose sent data stays unacknowledged this long.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Server ends a session idle outside a transaction after this. Leave unset (`"0s"`) behind an external
    /// pooler such as PgBouncer, which keeps idle server sessions on purpose.
    #[serde(with = "humantime_serde")]
    pub idle_session_timeout: Duration,
    /// Longest wait for a free pooled connection: a starved pool is an error, not a hang.
    #[serde(with = "humantime_serde")]
    pub pool_wait: Duration,
    /// Longest time to open a new connection.
    #[serde(with = "humantime_serde")]
    pub pool_create: Duration,
    /// Longest time to check a returned connection before reuse.
    #[serde(with = "humantime_serde")]
    pub pool_recycle: Duration,
    /// Longest wait for the migration advisory lock while another process applies migrations.
    #[serde(with = "humantime_serde")]
    pub migration_lock_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_deadline: Duration::from_secs(5),
            statement_timeout: Duration::from_millis(4500),
            lock_timeout: Duration::from_secs(3),
            ddl_lock_timeout: Duration::from_secs(2),
            idle_in_transaction_session_timeout: Duration::from_secs(10),
            client_connection_check_interval: Duration::from_secs(1),
            tcp_keepalives_idle: Duration::from_secs(5),
            tcp_keepalives_interval: Duration::from_secs(2),
            tcp_keepalives_count: 3,
            tcp_user_timeout: Duration::from_secs(10),
            idle_session_timeout: Duration::from_secs(60),
            pool_wait: Duration::from_secs(2),
            pool_create: Duration::from_secs(3),
            pool_recycle: Duration::from_secs(1),
            migration_lock_wait: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// Refuses any configuration where the server would hold on longer than the client waits.
    pub fn validate(&self) -> Result<(), StoreError> {
        let nonzero = [
            ("client_deadline", self.client_deadline),
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            ("ddl_lock_timeout", self.ddl_lock_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_session_timeout,
            ),
            (
                "client_connection_check_interval",
                self.client_connection_check_interval,
            ),
            ("tcp_keepalives_idle", self.tcp_keepalives_idle),
            ("tcp_keepalives_interval", self.tcp_keepalives_interval),
            ("tcp_user_timeout", self.tcp_user_timeout),
            ("pool_wait", self.pool_wait),
            ("pool_create", self.pool_create),
            ("pool_recycle", self.pool_recycle),
            ("migration_lock_wait", self.migration_lock_wait),
        ];
        for (key, value) in nonzero {
            if value.is_zero() {
                return Err(config_error(format!(
                    "store.timeouts.{key} is zero: a zero limit means \"wait forever\" to PostgreSQL; set a positive duration (see the defaults in courier.example.toml)"
                )));
            }
        }
        let must_be_below = [
            (
                "statement_timeout",
                self.statement_timeout,
                "client_deadline",
                self.client_deadline,
            ),
            (
                "lock_timeout",
                self.lock_timeout,
                "statement_timeout",
                self.statement_timeout,
            ),
            (
                "ddl_lock_timeout",
                self.ddl_lock_timeout,
                "statement_timeout",
                self.statement_timeout,
            ),
            (
                "pool_wait",
                self.pool_wait,
                "client_deadline",
                self.client_deadline,
            ),
            (
                "client_connection_check_interval",
                self.client_connection_check_interval,
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_session_timeout,
            ),
        ];
        for (low, low_value, high, high_value) in must_be_below {
            if low_value >= high_value {
                return Err(config_error(format!(
                    "store.timeouts.{low} ({}) must be below store.timeouts.{high} ({}): the server must give up before the client does, or abandoned work keeps its locks (incident 8); lower {low} or raise {high}",
                    humantime::format_duration(low_value),
                    humantime::format_duration(high_value),
                )));
            }
        }
        if self.tcp_keepalives_count == 0 {
            return Err(config_error(
                "store.timeouts.tcp_keepalives_count is 0: set at least 1 so a dead peer is detected".into(),
            ));
        }
        Ok(())
    }

    /// The server-side settings as connection `options`, so `pg_settings` shows them with
    /// `source = client` on every courier session.
    pub fn server_options(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        let secs = |d: Duration| d.as_secs().max(1);
        let mut options = format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={} \
             -c client_connection_check_interval={} -c tcp_keepalives_idle={} \
             -c tcp_keepalives_interval={} -c tcp_keepalives_count={} -c tcp_user_timeout={}",
            ms(self.statement_timeout),
            ms(self.lock_timeout),
            ms(self.idle_in_transaction_session_timeout),
            ms(self.client_connection_check_interval),
            secs(self.tcp_keepalives_idle),
            secs(self.tcp_keepalives_interval),
            self.tcp_keepalives_count,
            ms(self.tcp_user_timeout),
        );
        if !self.idle_session_timeout.is_zero() {
            options.push_str(&format!(
                " -c idle_session_timeout={}",
                ms(self.idle_session_timeout)
            ));
        }
        options
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Config(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Timeouts::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn server_timeout_not_below_client_deadline_is_refused_naming_both_keys() {
        let t = Timeouts {
            statement_timeout: Duration::from_secs(5),
            ..Timeouts::default()
        };
        let message = t.validate().expect_err("must refuse").to_string();
        assert!(
            message.contains("statement_timeout") && message.contains("client_deadline"),
            "{message}"
        );
    }

    #[test]
    fn lock_timeout_must_be_below_statement_timeout() {
        let t = Timeouts {
            lock_timeout: Duration::from_secs(4500),
            ..Timeouts::default()
        };
        let message = t.validate().expect_err("must refuse").to_string();
        assert!(message.contains("store.timeouts.lock_timeout"), "{message}");
    }

    #[test]
    fn zero_limits_are_refused() {
        let t = Timeouts {
            idle_in_transaction_session_timeout: Duration::ZERO,
            ..Timeouts::default()
        };
        let message = t.validate().expect_err("must refuse").to_string();
        assert!(
            message.contains("idle_in_transaction_session_timeout is zero"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml_like(r#"{"client_deadline": "5s", "statment_timeout": "1s"}"#);
        assert!(err.contains("statment_timeout"), "{err}");
    }

    fn toml_like(json: &str) -> String {
        match serde_json::from_str::<Timeouts>(json) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn server_options_carry_every_limit() {
        let options = Timeouts::default().server_options();
        for needle in [
            "statement_timeout=4500",
            "lock_timeout=3000",
            "idle_in_transaction_session_timeout=10000",
            "client_connection_check_interval=1000",
            "tcp_keepalives_idle=5",
            "tcp_user_timeout=10000",
            "idle_session_timeout=60000",
        ] {
            assert!(options.contains(needle), "{needle} missing from {options}");
        }
    }
}
