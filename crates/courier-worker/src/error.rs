//! Why a worker could not start: a configuration it refuses, a store or Kafka it cannot use, or a boot
//! deadline that passed while they were away.

use courier_store::StoreError;

use crate::boot::{BootError, GaveUp};

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] courier_kafka::Error),
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
}

impl<E: Into<WorkerError>> From<BootError<E>> for WorkerError {
    fn from(error: BootError<E>) -> Self {
        match error {
            BootError::Permanent(error) => error.into(),
            BootError::GaveUp(gave_up) => Self::GaveUp(gave_up),
        }
    }
}
