//! One operator process SIGKILLed `--kills` times at random moments while the keys are created.

use anyhow::Result;
use serde_json::json;

use super::{Args, Storm, pause};
use crate::workspace::step;

pub(super) async fn run(storm: Storm, args: &Args) -> Result<serde_json::Value> {
    let mut operator = storm.operator(
        "operator",
        // One process killed again and again: its crash safety is under test, not the
        // handover, and each restart would otherwise wait for the killed leader's Lease.
        &["--leader-election=false"],
    )?;
    let started = storm.begin(args).await?;
    step(&format!(
        "creating {} keys while the operator is killed {} times",
        storm.burst.count(),
        args.kills
    ));
    let kills = async {
        for _ in 0..args.kills {
            pause(args.max_kill_interval_ms).await;
            operator.kill();
            operator.restart()?;
        }
        anyhow::Ok(())
    };
    futures::try_join!(storm.burst.create_all(|_| ()), kills)?;
    let storm_seconds = started.elapsed().as_secs_f64();
    let mut figures = storm.settle(args, started, &[]).await?;
    figures["kills"] = json!(args.kills);
    figures["stormSeconds"] = json!(storm_seconds);
    Ok(figures)
}
