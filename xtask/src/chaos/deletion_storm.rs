//! Every other key deleted, at a random moment up to `--max-delete-delay-ms` after its
//! creation, while the rest are still being created: some before the operator saw them, some
//! with their create in flight at Imburse, some once Ready.

use anyhow::Result;
use futures::{StreamExt, TryStreamExt, channel::mpsc};
use kube::api::DeleteParams;
use serde_json::json;
use testenv::chaos::is_deleted;

use super::{Args, Storm, key_name, pause};
use crate::workspace::step;

pub(super) async fn run(storm: Storm, args: &Args) -> Result<serde_json::Value> {
    let _operator = storm.operator("operator", &["--leader-election=false"])?;
    let started = storm.begin(args).await?;
    let deleted: Vec<usize> = (0..storm.burst.count())
        .filter(|&i| is_deleted(i))
        .collect();
    step(&format!(
        "creating {} keys and deleting {} of them",
        storm.burst.count(),
        deleted.len()
    ));
    let (created, to_delete) = mpsc::unbounded();
    // The sender goes with the closure when every key is created, which ends the deletions.
    let creating = storm.burst.create_all(move |i| {
        if is_deleted(i) {
            // Fails only once the receiver is gone, when the deletions have failed.
            let _ = created.unbounded_send(i);
        }
    });
    let keys = &storm.burst.keys;
    let deleting = to_delete
        .map(Ok)
        .try_for_each_concurrent(None, |i| async move {
            pause(args.max_delete_delay_ms).await;
            keys.delete(&key_name(i), &DeleteParams::default()).await?;
            anyhow::Ok(())
        });
    futures::try_join!(creating, deleting)?;
    let storm_seconds = started.elapsed().as_secs_f64();
    let mut figures = storm.settle(args, started, &deleted).await?;
    figures["stormSeconds"] = json!(storm_seconds);
    figures["maxDeleteDelayMs"] = json!(args.max_delete_delay_ms);
    Ok(figures)
}
