//! SASL against the local broker's SASL_PLAINTEXT listener (`scripts/kafka.sh` adds it two ports above
//! the client port, 127.0.0.1:9094 by default, PLAIN and SCRAM-SHA-256/512 for user `courier`, password
//! `courier-secret`; elsewhere set `KAFKA_SASL_BROKERS`). Its own test binary: it installs the process-wide tracing subscriber to
//! see the ERROR line a refused password logs.
//!
//! A broker started by an older `scripts/kafka.sh` has no SASL listener: these tests then fail saying
//! to restart it, rather than skip.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use courier_core::local::kafka_brokers as plaintext_brokers;
use courier_core::OffsetRange;
use courier_kafka::{create_topic, Error, KafkaConfig, Producer, RangeReader, SaslMechanism};

/// The test user's password, as `scripts/kafka.sh` sets it up, and a wrong one.
const PASSWORD_ENV: &str = "COURIER_TEST_KAFKA_SASL_PASSWORD";
const WRONG_PASSWORD_ENV: &str = "COURIER_TEST_KAFKA_SASL_WRONG_PASSWORD";

fn sasl_brokers() -> String {
    let brokers = std::env::var("KAFKA_SASL_BROKERS").unwrap_or_else(|_| {
        // scripts/kafka.sh's convention: the SASL listener is two ports above the client port.
        let first = plaintext_brokers();
        let first = first.split(',').next().unwrap_or_default().to_owned();
        match first
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        {
            Some((host, port)) => format!("{host}:{}", port + 2),
            None => "127.0.0.1:9094".to_owned(),
        }
    });
    let listening = brokers
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .is_some_and(|address| {
            TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
        });
    assert!(
        listening,
        "no SASL listener answers on {brokers}: the local broker was started by an older \
         scripts/kafka.sh, before it had a SASL_PLAINTEXT listener. Restart it with \
         `scripts/kafka.sh restart` (or point KAFKA_SASL_BROKERS at a SASL_PLAINTEXT listener that \
         knows user courier / courier-secret with PLAIN and SCRAM)"
    );
    brokers
}

/// Every formatted log line, from every thread (librdkafka's included).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets the password variables and installs the log capture, once for the binary.
fn setup() -> Captured {
    static SETUP: Once = Once::new();
    static CAPTURED: Mutex<Option<Captured>> = Mutex::new(None);
    SETUP.call_once(|| {
        // Before any client or thread of these tests exists.
        std::env::set_var(PASSWORD_ENV, "courier-secret");
        std::env::set_var(WRONG_PASSWORD_ENV, "not-the-password");
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_env_filter("courier_kafka=info")
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .init();
        *CAPTURED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(captured);
    });
    CAPTURED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

fn config(mechanism: SaslMechanism, password_env: &str) -> KafkaConfig {
    KafkaConfig::new(sasl_brokers())
        .with_read_timeout(Duration::from_secs(30))
        .with_sasl(mechanism, "courier", password_env, false)
}

#[tokio::test]
async fn a_range_is_produced_and_read_over_sasl_plain_and_scram() {
    setup();
    for mechanism in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        let config = config(mechanism, PASSWORD_ENV);
        config.validate().expect("a valid SASL configuration");
        let topic = format!("courier-it-sasl-{:08x}", rand::random::<u32>());
        create_topic(&plaintext_brokers(), &topic, 1)
            .await
            .expect("create the topic");
        let producer = Producer::connect(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: producer: {e}", mechanism.as_str()));
        let records = (0..5u8).map(|i| (Some(0), None, vec![b'm', i]));
        producer
            .send_batch(&topic, records)
            .await
            .unwrap_or_else(|e| panic!("{}: produce: {e}", mechanism.as_str()));
        let reader = RangeReader::connect(config)
            .await
            .unwrap_or_else(|e| panic!("{}: reader: {e}", mechanism.as_str()));
        let range = OffsetRange::new(1, 4).expect("range");
        let messages = reader
            .read(&topic, 0, range)
            .await
            .unwrap_or_else(|e| panic!("{}: read: {e}", mechanism.as_str()));
        let payloads: Vec<_> = messages.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(
            payloads,
            vec![
                Some(vec![b'm', 1]),
                Some(vec![b'm', 2]),
                Some(vec![b'm', 3])
            ],
            "{}",
            mechanism.as_str()
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_once_naming_the_mechanism_and_the_user() {
    let captured = setup();
    // A timeout would take read_timeout (30 s) and be Error::Timeout: the variant is the check.
    let error = RangeReader::connect(config(SaslMechanism::ScramSha256, WRONG_PASSWORD_ENV))
        .await
        .expect_err("a wrong password must be refused");
    let message = error.to_string();
    assert!(
        matches!(error, Error::Refused { .. })
            && message.contains("SASL SCRAM-SHA-256 as user \"courier\"")
            && message.contains(WRONG_PASSWORD_ENV)
            && !message.contains("not-the-password"),
        "{message}"
    );
    assert!(!error.is_retryable());
    let error = Producer::connect(config(SaslMechanism::Plain, WRONG_PASSWORD_ENV))
        .await
        .expect_err("a wrong PLAIN password must be refused too");
    assert!(
        matches!(error, Error::Refused { .. }) && error.to_string().contains("SASL PLAIN"),
        "{error}"
    );
    let lines = String::from_utf8_lossy(
        &captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(
        lines
            .lines()
            .any(|line| line.trim_start().starts_with("ERROR")
                && line.contains("SASL SCRAM-SHA-256 as user \"courier\"")),
        "no ERROR line names the mechanism and the user:\n{lines}"
    );
    assert!(!lines.contains("not-the-password"), "{lines}");
}
