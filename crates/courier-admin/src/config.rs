//! The `[admin]` section: where the admin endpoint listens, and when a loop counts as stuck.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// Where the admin endpoint listens and how it judges liveness.
///
/// ```toml
/// [admin]
/// listen = "127.0.0.1:9464"   # "" (or enabled = false) turns it off
/// stall_after = "2m"
/// refresh = "5s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `false` turns the endpoint off (as does `listen = ""`).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// `host:port`; port 0 picks a free one (logged at start).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `/healthz` fails when one of the worker's loops has not come round for this long. Raised to at
    /// least the longest a planner tick may take while Kafka does not answer (see [`Self::stall_bound`]).
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    pub stall_after: Duration,
    /// How often the status page refreshes itself.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

/// The default address: Prometheus' registry lists 9464 for exporters of this kind; loopback only, so
/// nothing is exposed beyond the host unless asked for.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

fn default_enabled() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}

fn default_stall_after() -> Duration {
    Duration::from_secs(120)
}

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            stall_after: default_stall_after(),
            refresh: default_refresh(),
        }
    }
}

impl AdminConfig {
    /// The address to bind, or `None` when the endpoint is off.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let listen = self.listen.trim();
        if !self.enabled || listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|error| {
            format!(
                "admin.listen {listen:?} is not an address ({error}): write host:port, e.g. listen = \"{DEFAULT_LISTEN}\", or listen = \"\" to turn the admin endpoint off"
            )
        })
    }

    /// Whether `listen` is the default (a busy default port is a warning, a busy chosen one an error).
    pub fn listen_is_default(&self) -> bool {
        self.listen.trim() == DEFAULT_LISTEN
    }

    /// Checks the values on their own.
    pub fn validate(&self) -> Result<(), String> {
        self.address()?;
        if self.stall_after < Duration::from_secs(1) {
            return Err(format!(
                "admin.stall_after is {:?}: a loop counts as stuck after this long without coming round; write at least \"10s\", e.g. stall_after = \"2m\"",
                self.stall_after
            ));
        }
        if self.refresh < Duration::from_secs(1) {
            return Err(format!(
                "admin.refresh is {:?}: the status page reads the store and Kafka on each refresh; write at least \"1s\", e.g. refresh = \"5s\"",
                self.refresh
            ));
        }
        Ok(())
    }

    /// How long a loop may go without coming round before `/healthz` fails: `stall_after`, but never less
    /// than a planner tick can take with Kafka not answering (one watermark call per topic, each bounded
    /// by `kafka_read_timeout`) plus a minute of store calls.
    pub fn stall_bound(&self, topics: usize, kafka_read_timeout: Duration) -> Duration {
        let topics = u32::try_from(topics).unwrap_or(u32::MAX);
        let planner_worst = kafka_read_timeout
            .saturating_mul(topics.saturating_add(1))
            .saturating_add(Duration::from_secs(60));
        self.stall_after.max(planner_worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_by_default_on_loopback_and_off_with_an_empty_listen_or_enabled_false() {
        let config = AdminConfig::default();
        assert_eq!(
            config.address(),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9464))))
        );
        let off = AdminConfig {
            listen: String::new(),
            ..AdminConfig::default()
        };
        assert_eq!(off.address(), Ok(None));
        let off = AdminConfig {
            enabled: false,
            ..AdminConfig::default()
        };
        assert_eq!(off.address(), Ok(None));
    }

    #[test]
    fn a_bad_address_says_what_to_write() {
        let bad = AdminConfig {
            listen: "localhost".into(),
            ..AdminConfig::default()
        };
        let error = bad.validate().expect_err("no port");
        assert!(
            error.contains("admin.listen") && error.contains("listen = \"\""),
            "{error}"
        );
    }

    #[test]
    fn the_stall_bound_covers_a_planner_tick_against_a_silent_broker() {
        let config = AdminConfig::default();
        assert_eq!(
            config.stall_bound(1, Duration::from_secs(5)),
            Duration::from_secs(120)
        );
        assert_eq!(
            config.stall_bound(4, Duration::from_secs(30)),
            Duration::from_secs(5 * 30 + 60)
        );
    }
}
