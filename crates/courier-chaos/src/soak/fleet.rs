//! The soak's workers: a fixed number of slots, each running a `courier run` process (or none while a
//! kill lasts), all delivering to the current destination URL.
//!
//! Owns [`Fleet`]: killing and restarting a slot, freezing and thawing one (SIGSTOP / SIGCONT), rolling
//! every worker to a new URL (a DNS failure and its fix), and supervising: a worker that exits on its
//! own (say it could not boot while PostgreSQL restarted) is recorded and started again, as a process
//! supervisor would.

use std::time::Duration;

use crate::pipeline::Pipeline;
use crate::workers::WorkerHandle;
use crate::ChaosError;

struct Slot {
    worker: Option<WorkerHandle>,
    frozen: bool,
}

/// The workers of a soak.
pub struct Fleet {
    slots: Vec<Slot>,
    url: String,
    /// Workers that exited on their own, as their handles described them.
    pub unplanned_exits: Vec<String>,
}

impl Fleet {
    /// Starts `count` workers delivering to `url`.
    pub async fn start(p: &Pipeline, count: usize, url: &str) -> Result<Self, ChaosError> {
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            slots.push(Slot {
                worker: Some(p.start_worker(url).await?),
                frozen: false,
            });
        }
        Ok(Self {
            slots,
            url: url.to_owned(),
            unplanned_exits: Vec::new(),
        })
    }

    fn slot(&mut self, slot: usize) -> Result<&mut Slot, ChaosError> {
        let count = self.slots.len();
        self.slots
            .get_mut(slot)
            .ok_or_else(|| ChaosError::Setup(format!("no worker slot {slot} (of {count})")))
    }

    /// The `lease_owner` pattern of the slot's worker, if it has one.
    pub fn owner(&self, slot: usize) -> Option<String> {
        self.slots
            .get(slot)?
            .worker
            .as_ref()
            .map(WorkerHandle::owner_like)
    }

    /// SIGKILLs the slot's worker and leaves the slot empty; returns what was killed.
    pub async fn kill(&mut self, slot: usize) -> Result<String, ChaosError> {
        let Some(mut worker) = self.slot(slot)?.worker.take() else {
            return Ok(format!("slot {slot} had no worker"));
        };
        let what = worker.describe();
        worker.kill().await;
        Ok(what)
    }

    /// Starts a worker in an empty slot, delivering to the current URL.
    pub async fn restart(&mut self, p: &Pipeline, slot: usize) -> Result<(), ChaosError> {
        let url = self.url.clone();
        let entry = self.slot(slot)?;
        if entry.worker.is_none() {
            entry.worker = Some(p.start_worker(&url).await?);
            entry.frozen = false;
        }
        Ok(())
    }

    /// SIGSTOP (`frozen`) or SIGCONT of the slot's worker. Returns its `lease_owner` pattern.
    pub async fn freeze(&mut self, slot: usize, frozen: bool) -> Result<String, ChaosError> {
        let entry = self.slot(slot)?;
        let Some(worker) = &entry.worker else {
            return Err(ChaosError::Setup(format!(
                "slot {slot} has no worker to signal"
            )));
        };
        worker.freeze(frozen).await.map_err(ChaosError::Setup)?;
        entry.frozen = frozen;
        Ok(worker.owner_like())
    }

    /// Rolls every running worker over to `url`, one at a time: SIGTERM (drain, release), then a new
    /// worker. Empty slots start on `url` when their kill ends. Returns problems stopping the old ones.
    pub async fn redeploy(&mut self, p: &Pipeline, url: &str) -> Result<Vec<String>, ChaosError> {
        // The deliberate change is recorded first, or the new workers would refuse to start.
        p.record_url(url).await?;
        self.url = url.to_owned();
        let mut problems = Vec::new();
        for entry in &mut self.slots {
            let Some(mut old) = entry.worker.take() else {
                continue;
            };
            if entry.frozen {
                // The schedule never rolls out over a stopped worker (it could not drain): let it go on.
                let _ = old.freeze(false).await;
                entry.frozen = false;
            }
            if let Err(how) = old.stop(Duration::from_secs(10)).await {
                problems.push(how);
            }
            entry.worker = Some(p.start_worker(url).await?);
        }
        Ok(problems)
    }

    /// Starts again every worker that exited on its own (not frozen, not killed on purpose), recording
    /// how it ended.
    pub async fn supervise(&mut self, p: &Pipeline) -> Result<(), ChaosError> {
        let url = self.url.clone();
        for entry in &mut self.slots {
            let Some(worker) = entry.worker.as_mut() else {
                continue;
            };
            if let Some(how) = worker.exited() {
                self.unplanned_exits.push(how);
                entry.worker = Some(p.start_worker(&url).await?);
                entry.frozen = false;
            }
        }
        Ok(())
    }

    /// Thaws any frozen worker and hands every running one over (to [`Pipeline::finish`]).
    pub async fn into_workers(self) -> Vec<WorkerHandle> {
        let mut workers = Vec::new();
        for entry in self.slots {
            if let Some(worker) = entry.worker {
                if entry.frozen {
                    let _ = worker.freeze(false).await;
                }
                workers.push(worker);
            }
        }
        workers
    }
}
