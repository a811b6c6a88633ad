//! Worker processes as the store sees them: who runs which version where since when, their heartbeat,
//! and a graceful stop. `courier status` reads them; leases name their owner, not this row.

use crate::error::Result;
use crate::pool::Store;
use crate::query::params;

impl Store {
    /// Records a worker process (who runs what version since when) or refreshes its heartbeat.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        host: &str,
        pid: u32,
        version: &str,
    ) -> Result<()> {
        self.execute(
            "worker heartbeat",
            "INSERT INTO courier_workers (id, host, pid, version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
            params![
                worker_id.to_owned(),
                host.to_owned(),
                i32::try_from(pid).unwrap_or(i32::MAX),
                version.to_owned(),
            ],
        )
        .await
        .map(drop)
    }

    /// Marks a worker as stopped after a graceful drain.
    pub async fn worker_stopped(&self, worker_id: &str) -> Result<()> {
        self.execute(
            "worker stopped",
            "UPDATE courier_workers SET stopped_at = now() WHERE id = $1",
            params![worker_id.to_owned()],
        )
        .await
        .map(drop)
    }
}
