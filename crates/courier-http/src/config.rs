//! What an operator writes about one destination, with its defaults and the checks made at startup.
//!
//! The `///` comments on [`DestinationConfig`] are the operator's documentation of each key.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// What a destination receives: batches of envelopes, or one request per message.
///
/// An envelope carries one message whole: its id (`route/partition/offset`), topic, partition, offset,
/// timestamp, key, headers and payload; JSON payloads are embedded as JSON, other bytes are text or
/// base64 with a marker saying which, and a tombstone keeps its key. No format loses a byte. The
/// README's "What a destination receives" shows each with examples; `body` documents the envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON array of envelopes per batch, `Content-Type: application/json`.
    #[default]
    Json,
    /// One envelope per line, each line ending in `\n`, `Content-Type: application/x-ndjson`.
    Ndjson,
    /// One request per message, what most webhook receivers expect: the payload's bytes as the body
    /// and everything else in `X-Courier-*` headers; the `Idempotency-Key` is the message id.
    PerMessage,
}

impl Format {
    /// The name of the format in configuration files (`format = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ndjson => "ndjson",
            Self::PerMessage => "per-message",
        }
    }

    /// The `Content-Type` a batch body in this format is sent with. A per-message body's type is
    /// its payload's (`body::per_message_body`); were one encoded as a batch, it would be a JSON array.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json | Self::PerMessage => "application/json",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

/// One HTTP destination: where batches are POSTed and how hard courier may push it.
///
/// Its `Debug` output shows header names but not their values, which often are credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Absolute `http://` or `https://` URL every batch is POSTed to. Environment proxy variables are
    /// ignored: courier connects to this address directly, so DNS and connect failures are its own.
    pub url: String,
    /// How long one request may take, from connecting until the response body is read, e.g. `"10s"`.
    /// A request that takes longer is abandoned and the range retried later. Keep it well below the
    /// lease TTL. Default: 10 s.
    #[serde(with = "humantime_serde", default = "defaults::timeout")]
    pub timeout: Duration,
    /// What the destination receives: `"json"` (one JSON array of message envelopes per batch),
    /// `"ndjson"` (one envelope per line) or `"per-message"` (one request per message, the payload as
    /// the body, key, headers and position in `X-Courier-*` headers; `max_batch_messages` is then 1).
    /// Default: `"json"`.
    #[serde(default)]
    pub format: Format,
    /// Extra request headers, e.g. `{ Authorization = "Bearer ..." }`. The headers courier sets itself
    /// (`Content-Type`, `Idempotency-Key`, any `X-Courier-*`) cannot be overridden. Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How many requests to this destination may be in flight at once, across every route of the
    /// process that shares this destination's deliverer. Default: 8.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// At most this many messages in one request. Default: 500.
    #[serde(default = "defaults::max_batch_messages")]
    pub max_batch_messages: usize,
    /// At most about this many body bytes in one request, as estimated per envelope (payload, key,
    /// headers, base64 counted at its encoded length, about 320 bytes of envelope fields); keep a
    /// margin below a destination's hard limit. A single larger message is still sent, alone.
    /// Default: 1 MiB (1048576).
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// After this many consecutive retryable failures (5xx, 408, 429, timeouts, connect or DNS
    /// errors) the destination is paused (circuit open) so it stops taking every worker's slots.
    /// `0` never pauses. Default: 20.
    #[serde(default = "defaults::pause_after_failures")]
    pub pause_after_failures: u32,
    /// How long a paused destination rests before one probe request is let through; the probe's
    /// success resumes deliveries, its failure pauses again, e.g. `"10s"`. Default: 10 s.
    #[serde(with = "humantime_serde", default = "defaults::pause_for")]
    pub pause_for: Duration,
    /// The longest `Retry-After` courier honours; a destination asking for more gets this, e.g.
    /// `"5m"`. Default: 5 minutes.
    #[serde(with = "humantime_serde", default = "defaults::max_retry_after")]
    pub max_retry_after: Duration,
    /// Statuses meaning "this request is too large": a batch answered one of them is split in halves
    /// and the halves sent again, down to single messages (a single message still refused is
    /// quarantined, or fails the range with `on_poison = "fail-range"`). Only statuses courier treats
    /// as permanent can be listed (4xx other than 408 and 429). Default: `[413]`.
    #[serde(default = "defaults::too_large_statuses")]
    pub too_large_statuses: Vec<u16>,
}

impl fmt::Debug for DestinationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("DestinationConfig")
            .field("url", &self.redacted_url())
            .field("timeout", &self.timeout)
            .field("format", &self.format)
            .field("headers", &headers)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch_messages", &self.max_batch_messages)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("pause_after_failures", &self.pause_after_failures)
            .field("pause_for", &self.pause_for)
            .field("max_retry_after", &self.max_retry_after)
            .field("too_large_statuses", &self.too_large_statuses)
            .finish()
    }
}

mod defaults {
    use std::time::Duration;

    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_in_flight() -> usize {
        8
    }
    pub fn max_batch_messages() -> usize {
        500
    }
    pub fn max_batch_bytes() -> usize {
        1024 * 1024
    }
    pub fn pause_after_failures() -> u32 {
        20
    }
    pub fn pause_for() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_retry_after() -> Duration {
        Duration::from_secs(300)
    }
    pub fn too_large_statuses() -> Vec<u16> {
        vec![413]
    }
}

/// Headers courier sets on requests; a configured header must not replace them. Every `x-courier-`
/// name is reserved too, including those only some requests carry (`X-Courier-Replay`, per-message
/// headers).
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "idempotency-key",
];
const RESERVED_PREFIX: &str = "x-courier-";

/// A destination setting that cannot work. Each message names the key and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("destination `url` {url:?} is not a valid absolute URL ({reason}): write one such as \"https://api.example.com/events\"")]
    InvalidUrl { url: String, reason: String },
    #[error("destination `url` {url:?} uses the scheme {scheme:?}: courier only delivers over \"http\" or \"https\"")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("destination `{key}` is 0: set a positive duration such as \"10s\"")]
    ZeroDuration { key: &'static str },
    #[error("destination `{key}` is 0: nothing could ever be sent; set a positive number (default {default})")]
    ZeroLimit { key: &'static str, default: usize },
    #[error("destination `headers` entry {name:?} is not a valid header ({reason}): use a token name and a visible-ASCII value")]
    InvalidHeader { name: String, reason: String },
    #[error("destination `too_large_statuses` lists {status}, which courier retries as a transient failure (408, 429, 5xx other than 501) or does not refuse (1xx-3xx): list only statuses that refuse a request for good, such as 413")]
    TooLargeNotPermanent { status: u16 },
    #[error("destination `headers` entry {name:?} is set by courier itself and cannot be configured: remove it (use `format` to choose the body encoding)")]
    ReservedHeader { name: String },
}

impl DestinationConfig {
    /// A destination at `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: defaults::timeout(),
            format: Format::default(),
            headers: BTreeMap::new(),
            max_in_flight: defaults::max_in_flight(),
            max_batch_messages: defaults::max_batch_messages(),
            max_batch_bytes: defaults::max_batch_bytes(),
            pause_after_failures: defaults::pause_after_failures(),
            pause_for: defaults::pause_for(),
            max_retry_after: defaults::max_retry_after(),
            too_large_statuses: defaults::too_large_statuses(),
        }
    }

    /// Checks every setting, returning the first that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parsed_url()?;
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroDuration { key: "timeout" });
        }
        if self.pause_after_failures > 0 && self.pause_for.is_zero() {
            return Err(ConfigError::ZeroDuration { key: "pause_for" });
        }
        let limits = [
            (
                "max_in_flight",
                self.max_in_flight,
                defaults::max_in_flight(),
            ),
            (
                "max_batch_messages",
                self.max_batch_messages,
                defaults::max_batch_messages(),
            ),
            (
                "max_batch_bytes",
                self.max_batch_bytes,
                defaults::max_batch_bytes(),
            ),
        ];
        for (key, value, default) in limits {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { key, default });
            }
        }
        if let Some(&status) = self.too_large_statuses.iter().find(|&&status| {
            !matches!(
                courier_core::Disposition::from_http_status(status, String::new(), None),
                courier_core::Disposition::Permanent { .. }
            ) || status < 400
        }) {
            return Err(ConfigError::TooLargeNotPermanent { status });
        }
        self.header_pairs()?;
        Ok(())
    }

    /// The URL with its credentials hidden, for logs, errors and the store (which records a route's
    /// destination URL: see `courier_store::routes`): the userinfo's password (or a user alone, often a
    /// token), and the values of query parameters whose names look like credentials. A URL that does not
    /// parse is shown as "<invalid URL>", since where its secret sits is unknown.
    pub fn redacted_url(&self) -> String {
        const SECRET_PARAMS: &[&str] = &[
            "token",
            "key",
            "secret",
            "pass",
            "auth",
            "sig",
            "credential",
        ];
        let Ok(mut url) = reqwest::Url::parse(&self.url) else {
            return "<invalid URL>".to_owned();
        };
        // `set_username` / `set_password` fail only for URLs that cannot carry credentials.
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        } else if !url.username().is_empty() {
            let _ = url.set_username("***");
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(name, value)| {
                    let lower = name.to_ascii_lowercase();
                    if SECRET_PARAMS.iter().any(|secret| lower.contains(secret)) {
                        (name.into_owned(), "***".to_owned())
                    } else {
                        (name.into_owned(), value.into_owned())
                    }
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// The URL, parsed and checked to be http(s) with a host.
    pub(crate) fn parsed_url(&self) -> Result<reqwest::Url, ConfigError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| ConfigError::InvalidUrl {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::UnsupportedScheme {
                url: self.url.clone(),
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::InvalidUrl {
                url: self.url.clone(),
                reason: "it has no host".to_owned(),
            });
        }
        Ok(url)
    }

    /// The configured headers, parsed and checked against the reserved ones.
    pub(crate) fn header_pairs(&self) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let invalid = |reason: String| ConfigError::InvalidHeader {
                    name: name.clone(),
                    reason,
                };
                let header =
                    HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
                if RESERVED_HEADERS.contains(&header.as_str())
                    || header.as_str().starts_with(RESERVED_PREFIX)
                {
                    return Err(ConfigError::ReservedHeader { name: name.clone() });
                }
                let mut value = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
                // Configured headers often carry credentials: keep them out of debug output.
                value.set_sensitive(true);
                Ok((header, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DestinationConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn redacted_urls_hide_passwords_user_tokens_and_secret_query_values_only() {
        let redacted = |url: &str| DestinationConfig::new(url).redacted_url();
        assert_eq!(
            redacted("https://svc:hunter2@h.example/in?api_key=k1&region=eu"),
            "https://svc:***@h.example/in?api_key=***&region=eu"
        );
        assert_eq!(
            redacted("https://tok123@h.example/in"),
            "https://***@h.example/in"
        );
        assert_eq!(
            redacted("http://127.0.0.1:9/hooks"),
            "http://127.0.0.1:9/hooks"
        );
        let debug = format!(
            "{:?}",
            DestinationConfig::new("https://u:hunter2@h.example/")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn defaults_fill_everything_but_the_url() {
        let config = parse(r#"url = "http://127.0.0.1:9/""#).expect("minimal config parses");
        assert_eq!(config, DestinationConfig::new("http://127.0.0.1:9/"));
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.format, Format::Json);
        assert_eq!(config.max_in_flight, 8);
        assert_eq!(config.max_batch_messages, 500);
        assert_eq!(config.max_batch_bytes, 1 << 20);
        assert_eq!(config.pause_after_failures, 20);
        assert_eq!(config.pause_for, Duration::from_secs(10));
        assert_eq!(config.too_large_statuses, [413]);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn every_key_parses() {
        let config = parse(
            r#"
            url = "https://hooks.example.com/in"
            timeout = "2s 500ms"
            format = "per-message"
            headers = { Authorization = "Bearer x" }
            max_in_flight = 2
            max_batch_messages = 10
            max_batch_bytes = 4096
            pause_after_failures = 3
            pause_for = "1m"
            max_retry_after = "30s"
            too_large_statuses = [413, 400]
            "#,
        )
        .expect("full config parses");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.format, Format::PerMessage);
        assert_eq!(config.pause_for, Duration::from_secs(60));
        assert_eq!(config.too_large_statuses, [413, 400]);
        assert_eq!(
            config.headers.get("Authorization").map(String::as_str),
            Some("Bearer x")
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn formats_are_named_in_kebab_case_and_unknown_ones_refused() {
        for (name, format) in [
            ("json", Format::Json),
            ("ndjson", Format::Ndjson),
            ("per-message", Format::PerMessage),
        ] {
            let config = parse(&format!("url = \"http://127.0.0.1/\"\nformat = \"{name}\""))
                .expect("known format");
            assert_eq!(config.format, format);
        }
        let err = parse("url = \"http://127.0.0.1/\"\nformat = \"payload\"").expect_err("unknown");
        assert!(err.to_string().contains("per-message"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("url = \"http://127.0.0.1/\"\ntimeout_ms = 5").expect_err("typo must fail");
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let check = |edit: fn(&mut DestinationConfig)| {
            let mut config = DestinationConfig::new("http://127.0.0.1:1/");
            edit(&mut config);
            config.validate().expect_err("invalid").to_string()
        };
        assert!(check(|c| c.url = "not a url".into()).contains("`url`"));
        assert!(check(|c| c.url = "ftp://127.0.0.1/x".into()).contains("\"ftp\""));
        assert!(check(|c| c.timeout = Duration::ZERO).contains("`timeout`"));
        assert!(check(|c| c.max_in_flight = 0).contains("`max_in_flight`"));
        assert!(check(|c| c.max_batch_messages = 0).contains("`max_batch_messages`"));
        assert!(check(|c| c.max_batch_bytes = 0).contains("`max_batch_bytes`"));
        assert!(check(|c| c.pause_for = Duration::ZERO).contains("`pause_for`"));
        assert!(check(|c| c.too_large_statuses = vec![503]).contains("`too_large_statuses`"));
        assert!(check(|c| c.too_large_statuses = vec![200]).contains("`too_large_statuses`"));
        assert!(check(|c| {
            c.headers.insert("Idempotency-Key".into(), "x".into());
        })
        .contains("set by courier"));
        assert!(check(|c| {
            c.headers.insert("X-Courier-Replay".into(), "x".into());
        })
        .contains("set by courier"));
        assert!(check(|c| {
            c.headers.insert("bad header".into(), "x".into());
        })
        .contains("\"bad header\""));
        assert!(check(|c| {
            c.headers.insert("X-Ok".into(), "line\nbreak".into());
        })
        .contains("\"X-Ok\""));
    }

    #[test]
    fn a_disabled_breaker_needs_no_pause() {
        let mut config = DestinationConfig::new("http://127.0.0.1:1/");
        config.pause_after_failures = 0;
        config.pause_for = Duration::ZERO;
        assert_eq!(config.validate(), Ok(()));
    }
}
