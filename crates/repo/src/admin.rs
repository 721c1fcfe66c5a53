//! Listing, verifying and deleting snapshots, and collecting unreferenced chunks.
//!
//! Garbage collection is mark-and-sweep, safe against concurrent writers:
//! - a writer registers `pending/<id>.json` before it checks for any chunk, and removes it after
//!   its manifest is written;
//! - `gc` marks every chunk any manifest references; it sweeps nothing while a live write
//!   marker exists, nor any chunk younger than the grace period (chunks of a write that has
//!   not registered yet, clock skew); it records the sweep in `gc/last-sweep.json` and looks
//!   for new write markers between batches of deletions, stopping when one appears;
//! - a writer whose write overlapped a sweep checks that every chunk it reused still exists
//!   before writing its manifest, and fails cleanly (nothing committed) if one is gone.
//!
//! A snapshot is its manifest: objects under `snapshots/<id>/` without one (a working set left
//! by a deletion that stopped halfway, or stored while the snapshot was being deleted) are not
//! snapshots, and `gc` deletes such orphan working sets once they are older than the grace
//! period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use crate::error::{RepoError, Result};
use crate::format::{ChunkId, Manifest};
use crate::layout;
use crate::repo::Repository;
use crate::writer::{PendingMarker, SweepRecord};

/// One line of `podsnap repo ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The snapshot id.
    pub id: String,
    /// When it was written.
    pub created_at: String,
    /// Plain bytes of all streams.
    pub size: u64,
    /// Stream names.
    pub streams: Vec<String>,
}

/// Options of a garbage collection.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Chunks younger than this are never deleted.
    pub grace: Duration,
    /// A write marker older than this belongs to a dead writer and is removed.
    pub stale_write_after: Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            stale_write_after: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

/// What a garbage collection found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Snapshots whose chunks were kept.
    pub snapshots: usize,
    /// Chunks referenced by them.
    pub referenced_chunks: usize,
    /// Unreferenced chunks old enough to delete.
    pub unreferenced_chunks: usize,
    /// Unreferenced chunks kept for the grace period.
    pub young_chunks: usize,
    /// Chunks deleted.
    pub deleted_chunks: usize,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Writes in progress that postponed the sweep.
    pub writes_in_progress: Vec<String>,
    /// Stale write markers removed.
    pub stale_writes_removed: Vec<String>,
    /// Snapshot ids whose working set was deleted (or, in a dry run, would be) because their
    /// manifest is gone.
    pub orphan_working_sets: Vec<String>,
}

/// What verifying a snapshot found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Distinct chunks checked.
    pub chunks: usize,
    /// Plain bytes checked (deep verification only).
    pub bytes: u64,
}

const SWEEP_BATCH: usize = 256;

impl Repository {
    /// Every snapshot in the repository, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        self.config().await?;
        let ids = self.snapshot_ids().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.manifest(&id).await {
                Ok(m) => out.push(SnapshotSummary {
                    id,
                    created_at: m.created_at.clone(),
                    size: m.total_size(),
                    streams: m.streams.iter().map(|s| s.name.clone()).collect(),
                }),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "skipping an unreadable snapshot")
                }
            }
        }
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(out)
    }

    /// Ids of the snapshots: those with a manifest (other objects under `snapshots/<id>/` do
    /// not make a snapshot).
    async fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self.snapshot_objects().await?.0)
    }

    /// Ids of the snapshots, and the working-set objects with their snapshot ids.
    async fn snapshot_objects(
        &self,
    ) -> Result<(Vec<String>, Vec<(String, object_store::ObjectMeta)>)> {
        let listing = self
            .inner
            .list(&layout::snapshots(), "listing snapshots")
            .await?;
        let mut ids = Vec::new();
        let mut working_sets = Vec::new();
        for meta in listing {
            let parts: Vec<_> = meta.location.parts().collect();
            // Exactly snapshots/<id>/<name>: nothing else is ours.
            let [_, id, name] = parts.as_slice() else {
                continue;
            };
            let id = id.as_ref().to_owned();
            match name.as_ref() {
                "manifest.json" => ids.push(id),
                "working-set.json" => working_sets.push((id, meta)),
                _ => {}
            }
        }
        ids.sort();
        ids.dedup();
        Ok((ids, working_sets))
    }

    /// Deletes a snapshot: its working set and manifest go at once (the snapshot is no longer
    /// visible); its chunks stay until `gc` finds them unreferenced, since other snapshots may
    /// share them.
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        self.manifest(id).await?;
        // The working set first: stopping halfway leaves a snapshot without one, not an orphan.
        self.inner
            .delete(&layout::working_set(id), "deleting the working set")
            .await?;
        self.inner
            .delete(&layout::manifest(id), "deleting the manifest")
            .await?;
        self.inner
            .delete(&layout::pending(id), "deleting a write marker")
            .await
    }

    /// Checks that every chunk of snapshot `id` exists; with `deep`, also fetches and verifies
    /// every chunk (hash, decryption, decompression).
    pub async fn verify_snapshot(&self, id: &str, deep: bool) -> Result<VerifyReport> {
        let snapshot = self.open_snapshot(id).await?;
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = snapshot
            .manifest()
            .streams
            .iter()
            .flat_map(|s| s.chunks.iter().filter_map(|c| c.id))
            .filter(|c| seen.insert(*c))
            .collect();
        let concurrency = self.inner.options.concurrency.max(1);
        let inner = Arc::clone(&self.inner);
        let bytes: Vec<u64> = futures::stream::iter(ids.iter().copied())
            .map(|chunk| {
                let inner = Arc::clone(&inner);
                let snapshot = id.to_owned();
                async move {
                    if deep {
                        return inner
                            .fetch_chunk(&snapshot, chunk)
                            .await
                            .map(|d| d.len() as u64);
                    }
                    match inner
                        .head(&layout::chunk(&chunk), "checking a chunk")
                        .await?
                    {
                        Some(_) => Ok(0),
                        None => Err(RepoError::MissingChunk {
                            snapshot,
                            chunk: format!("{}/{}", inner.location.url, layout::chunk(&chunk)),
                        }),
                    }
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        Ok(VerifyReport {
            chunks: ids.len(),
            bytes: bytes.iter().sum(),
        })
    }

    /// Deletes chunks no snapshot references (see the module docs for why this is safe while
    /// snapshots are being written), and working sets whose snapshot is gone.
    pub async fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        self.config().await?;
        let mut report = GcReport::default();
        let now = jiff::Timestamp::now();
        let live = self.live_writes(options, now, &mut report).await?;
        if !live.is_empty() {
            report.writes_in_progress = live;
            return Ok(report);
        }
        let (ids, working_sets) = self.snapshot_objects().await?;
        let cutoff = now.as_second() - options.grace.as_secs() as i64;
        self.remove_orphan_working_sets(&ids, working_sets, cutoff, options, &mut report)
            .await?;
        let mut referenced = HashSet::new();
        for id in ids {
            let manifest: Manifest = self.manifest(&id).await?;
            report.snapshots += 1;
            referenced.extend(
                manifest
                    .streams
                    .iter()
                    .flat_map(|s| s.chunks.iter().filter_map(|c| c.id)),
            );
        }
        report.referenced_chunks = referenced.len();
        let chunks = self.inner.list(&layout::chunks(), "listing chunks").await?;
        let mut victims = Vec::new();
        for meta in chunks {
            let Some(id) = layout::chunk_id_of(&meta.location) else {
                continue;
            };
            if referenced.contains(&id) {
                continue;
            }
            if meta.last_modified.timestamp() > cutoff {
                report.young_chunks += 1;
                continue;
            }
            report.unreferenced_chunks += 1;
            victims.push(meta);
        }
        if options.dry_run || victims.is_empty() {
            return Ok(report);
        }
        let record = SweepRecord {
            started_at: now.to_string(),
            finished_at: None,
        };
        self.write_sweep_record(&record).await?;
        for batch in victims.chunks(SWEEP_BATCH) {
            let live = self
                .live_writes(options, jiff::Timestamp::now(), &mut report)
                .await?;
            if !live.is_empty() {
                report.writes_in_progress = live;
                break;
            }
            let deleted: Vec<u64> = futures::stream::iter(batch.to_vec())
                .map(|meta: object_store::ObjectMeta| {
                    let inner = Arc::clone(&self.inner);
                    async move {
                        inner
                            .delete(&meta.location, "deleting an unreferenced chunk")
                            .await
                            .map(|()| meta.size)
                    }
                })
                .buffer_unordered(self.inner.options.concurrency.max(1))
                .try_collect()
                .await?;
            report.deleted_chunks += deleted.len();
            report.deleted_bytes += deleted.iter().sum::<u64>();
        }
        self.write_sweep_record(&SweepRecord {
            finished_at: Some(jiff::Timestamp::now().to_string()),
            ..record
        })
        .await?;
        Ok(report)
    }

    /// Deletes working sets whose snapshot has no manifest, once they are older than the
    /// grace period (so a snapshot whose manifest the listing missed while it was written keeps
    /// a working set stored just after).
    async fn remove_orphan_working_sets(
        &self,
        ids: &[String],
        working_sets: Vec<(String, object_store::ObjectMeta)>,
        cutoff: i64,
        options: &GcOptions,
        report: &mut GcReport,
    ) -> Result<()> {
        let live: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for (id, meta) in working_sets {
            if live.contains(id.as_str()) || meta.last_modified.timestamp() > cutoff {
                continue;
            }
            if !options.dry_run {
                self.inner
                    .delete(&meta.location, "deleting an orphan working set")
                    .await?;
            }
            report.orphan_working_sets.push(id);
        }
        Ok(())
    }

    async fn write_sweep_record(&self, record: &SweepRecord) -> Result<()> {
        let body = serde_json::to_vec(record).expect("record serialises");
        self.inner
            .put(&layout::last_sweep(), body.into(), "recording the sweep")
            .await
    }

    /// Write markers of live writers; stale ones are removed.
    async fn live_writes(
        &self,
        options: &GcOptions,
        now: jiff::Timestamp,
        report: &mut GcReport,
    ) -> Result<Vec<String>> {
        let markers = self
            .inner
            .list(&layout::pendings(), "listing writes in progress")
            .await?;
        let mut live = Vec::new();
        for meta in markers {
            let bytes = match self
                .inner
                .get(&meta.location, "reading a write marker")
                .await
            {
                Ok(b) => b,
                Err(RepoError::Storage {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => continue,
                Err(e) => return Err(e),
            };
            let marker: Option<PendingMarker> = serde_json::from_slice(&bytes).ok();
            let started = marker
                .as_ref()
                .and_then(|m| m.started_at.parse::<jiff::Timestamp>().ok())
                .unwrap_or_else(|| {
                    jiff::Timestamp::from_second(meta.last_modified.timestamp()).unwrap_or(now)
                });
            let name = marker
                .map(|m| m.snapshot_id)
                .unwrap_or_else(|| meta.location.to_string());
            let age = now.as_second() - started.as_second();
            if age > options.stale_write_after.as_secs() as i64 {
                if !options.dry_run {
                    self.inner
                        .delete(&meta.location, "removing a stale write marker")
                        .await?;
                }
                report.stale_writes_removed.push(name);
            } else {
                live.push(name);
            }
        }
        Ok(live)
    }
}
