//! What needs a human, as data: a stable [`Code`] with its runbook, and an [`Attention`] item (what,
//! where, since when). Deciding which items a report has is [`super::judge`]'s; wording them for a
//! terminal or JSON is `render`'s.

/// What a condition is, as a stable machine-readable code, with its runbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    /// A configured route no worker has ever recorded: nothing delivers it.
    RouteNotStarted,
    /// A recorded route no live worker serves.
    NoLiveWorker,
    /// Kafka did not answer: lag and message ages are unknown.
    KafkaUnreachable,
    /// Ranges failed for good: offsets settled without being delivered.
    FailedRanges,
    /// Messages a destination refused on their own, set aside.
    QuarantinedMessages,
    /// Ranges waiting to be retried after a failed attempt: a destination (or Kafka) failing now.
    RetryingRanges,
    /// A destination asked every worker to wait (`Retry-After`).
    DestinationDeferred,
    /// A route's lag is above `status.max_lag`.
    Lag,
    /// A partition's oldest undelivered message is older than `status.max_age`.
    OldestMessageAge,
    /// Kafka's high watermark is below courier's frontier: the topic was recreated?
    WatermarkBelowFrontier,
    /// Offsets below Kafka's log start that courier never delivered: deleted before delivery.
    DeletedBeforeDelivery,
    /// Losses recorded in the last day (offsets Kafka deleted before delivery, found by a worker).
    OffsetsLost,
    /// An operator paused the route (`courier pause`): its lag grows on purpose, and a pause forgotten
    /// after an incident is an outage nobody is paged for.
    RoutePaused,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::RouteNotStarted => "route-not-started",
            Code::NoLiveWorker => "no-live-worker",
            Code::KafkaUnreachable => "kafka-unreachable",
            Code::FailedRanges => "failed-ranges",
            Code::QuarantinedMessages => "quarantined-messages",
            Code::RetryingRanges => "retrying-ranges",
            Code::DestinationDeferred => "destination-deferred",
            Code::Lag => "lag",
            Code::OldestMessageAge => "oldest-message-age",
            Code::WatermarkBelowFrontier => "watermark-below-frontier",
            Code::DeletedBeforeDelivery => "deleted-before-delivery",
            Code::OffsetsLost => "offsets-lost",
            Code::RoutePaused => "route-paused",
        }
    }

    /// The runbook page, relative to the repository root.
    pub fn runbook(self) -> &'static str {
        match self {
            Code::RouteNotStarted | Code::NoLiveWorker => "docs/runbooks/no-live-worker.md",
            Code::KafkaUnreachable => "docs/runbooks/kafka-unavailable.md",
            Code::FailedRanges => "docs/runbooks/failed-ranges.md",
            Code::QuarantinedMessages => "docs/runbooks/quarantined-messages.md",
            Code::RetryingRanges => "docs/runbooks/retrying-ranges.md",
            Code::DestinationDeferred => "docs/runbooks/destination-paused.md",
            Code::DeletedBeforeDelivery | Code::OffsetsLost => "docs/runbooks/retention.md",
            Code::Lag
            | Code::OldestMessageAge
            | Code::WatermarkBelowFrontier
            | Code::RoutePaused => "docs/runbooks/lag.md",
        }
    }
}

/// One condition that needs a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    pub code: Code,
    pub route: Option<String>,
    pub partition: Option<i32>,
    pub destination: Option<String>,
    /// When it started (Unix seconds, the store's clock), when known.
    pub since_unix: Option<i64>,
    /// What is wrong and what to do, without the "since" and the runbook (see [`Attention::line`]).
    pub message: String,
}

impl Attention {
    pub(super) fn new(code: Code, message: String) -> Self {
        Self {
            code,
            route: None,
            partition: None,
            destination: None,
            since_unix: None,
            message: without_runbook(message),
        }
    }

    pub(super) fn route(mut self, route: &str) -> Self {
        self.route = Some(route.to_owned());
        self
    }

    pub(super) fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub(super) fn destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    pub(super) fn since(mut self, since_unix: Option<i64>) -> Self {
        self.since_unix = since_unix;
        self
    }

    pub fn runbook(&self) -> &'static str {
        self.code.runbook()
    }
}

/// `message` without a closing "Runbook: docs/runbooks/x.md" (an error's own words often end so): an
/// attention item carries its runbook apart, and says it once.
fn without_runbook(message: String) -> String {
    match message.rfind(" Runbook: ") {
        Some(at) if !message[at + " Runbook: ".len()..].trim().contains(' ') => {
            message[..at].trim_end().to_owned()
        }
        _ => message,
    }
}
