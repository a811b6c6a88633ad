//! Credentials checked when a client is made: brokers that refuse courier's SASL credentials or TLS
//! certificate chain make librdkafka retry the handshake forever and every call wait out its timeout.
//! With SASL or TLS configured, each reader, producer and admin session first asks the brokers for
//! metadata on a client of its own and fails at once, naming the mechanism and the user, when they
//! refuse it ([`Error::Refused`]); plaintext has nothing to refuse and skips the round trip.
//!
//! Owns: [`check`] and [`check_connection`] (`courier check-config --connect`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::config::KafkaConfig;
use crate::context::CourierContext;
use crate::error::{is_timeout, Error};
use crate::outage::OutageLog;
use crate::reader::blocking;

/// How long the first metadata request may wait before the context is asked whether the brokers
/// refused the client; each next one waits twice as long (up to [`MAX_STEP`]), so a cluster far away
/// still gets to answer one.
const FIRST_STEP: Duration = Duration::from_millis(100);
const MAX_STEP: Duration = Duration::from_secs(5);

/// Fails with [`Error::Refused`] when the brokers refuse `config`'s credentials or certificates, with
/// [`Error::Timeout`] when they do not answer within [`KafkaConfig::read_timeout`].
pub(crate) async fn check(config: &KafkaConfig) -> Result<(), Error> {
    if !config.can_be_refused() {
        return Ok(());
    }
    check_connection(config).await.map(drop)
}

/// Asks the brokers for the cluster's metadata as courier would (same security settings), failing as
/// [`check`] does; returns how many brokers the cluster has.
pub async fn check_connection(config: &KafkaConfig) -> Result<usize, Error> {
    let config = config.clone();
    let outages = OutageLog::for_cluster(&config.brokers);
    blocking(move || {
        let context = CourierContext::new(&config, outages, None);
        // A consumer: librdkafka hands it the error events, which rdkafka passes through the context.
        let client: BaseConsumer<CourierContext> = config
            .admin_client_config()
            .create_with_context(context)
            .map_err(Error::Config)?;
        let started = Instant::now();
        let mut step = FIRST_STEP;
        loop {
            let left = config.read_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout {
                    operation: format!("checking courier's credentials ({})", config.identity()),
                    brokers: config.brokers.clone(),
                    after: config.read_timeout,
                });
            }
            let wait = left.min(step);
            step = (step * 2).min(MAX_STEP);
            match client.fetch_metadata(None, wait) {
                Ok(metadata) => return Ok(metadata.brokers().len()),
                Err(error) if is_timeout(&error) => {}
                Err(source) => {
                    return Err(Error::Kafka {
                        operation: "checking courier's credentials".to_owned(),
                        source,
                    })
                }
            }
            // Serves librdkafka's error events to the context, which keeps a refusal's reason.
            let _ = client.poll(Duration::ZERO);
            if let Some(reason) = client.context().take_refusal() {
                return Err(Error::Refused {
                    brokers: config.brokers.clone(),
                    identity: config.identity(),
                    reason,
                });
            }
        }
    })
    .await?
}
