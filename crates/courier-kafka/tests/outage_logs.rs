//! A broker outage is logged once, not once per librdkafka event. Its own test binary: it installs the
//! process-wide tracing subscriber (events come from librdkafka's and tokio's blocking threads, which a
//! thread-local subscriber would miss).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::OffsetRange;
use courier_kafka::{KafkaConfig, RangeReader, ReadError};

/// Every formatted log line, in order.
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

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn a_closed_port_is_one_outage_warning_not_one_error_per_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("courier_kafka=debug,librdkafka=debug")
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .init();

    let config = KafkaConfig::new("127.0.0.1:1").with_read_timeout(Duration::from_secs(3));
    let reader = RangeReader::connect(config).await.expect("reader");
    let range = OffsetRange::new(0, 10).expect("range");
    let error = reader
        .read("anything", 0, range)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, ReadError::Timeout { .. }), "{error:?}");

    let lines = captured.lines();
    let at = |level: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|line| line.split_whitespace().next() == Some(level))
            .collect()
    };
    let outages: Vec<_> = at("WARN")
        .into_iter()
        .filter(|line| line.contains("Kafka broker outage") && line.contains("127.0.0.1:1"))
        .collect();
    assert_eq!(outages.len(), 1, "one outage warning: {lines:#?}");
    let throttled = at("DEBUG")
        .into_iter()
        .filter(|line| line.contains("counted in the outage summary"))
        .count();
    assert!(
        throttled >= 2,
        "several failures were reported, and throttled: {lines:#?}"
    );
    assert_eq!(at("ERROR"), Vec::<&String>::new(), "no ERROR for an outage");
}
