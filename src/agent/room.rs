//! Disk space before a node fetches anything: room in the chunk store for
//! the chunks it lacks (evicting finished distributions if needed), and
//! room in the Docker Engine's data root for the load. A node short of
//! either fails at once with a message naming the disk and the space
//! needed, and nothing is fetched or loaded.

use crate::agent::plan::NodePlan;
use crate::content::manifest::Manifest;
use crate::content::retention::Keeper;
use crate::engine::Engine;
use crate::ops::human;

/// `docker load` (the legacy loader of Docker 20.10 to 24) first unpacks
/// the whole archive into a temp directory under the data root, then
/// applies each layer: about twice the layers' size at the peak.
const LOAD_SPACE_FACTOR: u64 = 2;

/// Checks both disks for `plan`; the error is the reason for the pusher.
pub(super) async fn check(
    keeper: &Keeper,
    engine: &Engine,
    manifest: &Manifest,
    plan: &NodePlan,
) -> Result<(), String> {
    if plan.is_skip() {
        return Ok(());
    }
    keeper
        .make_room(plan.summary.need_bytes)
        .await
        .map_err(|e| e.to_string())?;
    check_engine_room(engine, manifest, plan).await
}

/// The engine's half of [`check`]: room in its data root for loading
/// `plan`. Only reads (a dry run uses it alone).
pub(super) async fn check_engine_room(
    engine: &Engine,
    manifest: &Manifest,
    plan: &NodePlan,
) -> Result<(), String> {
    let layers: u64 = plan.layers.iter().map(|&l| manifest.layers[l].size).sum();
    check_engine(engine, layers * LOAD_SPACE_FACTOR).await
}

/// Checks the file system of the engine's data root, when the engine is
/// local (a unix socket) and says where its data root is.
async fn check_engine(engine: &Engine, needed: u64) -> Result<(), String> {
    if needed == 0 || engine.host().starts_with("tcp://") || engine.host().starts_with("http") {
        return Ok(());
    }
    let Some(root) = engine.data_root().await else {
        return Ok(());
    };
    let space = match tokio::task::spawn_blocking({
        let root = root.clone();
        move || crate::content::disk::space(&root)
    })
    .await
    {
        Ok(Ok(space)) => space,
        _ => {
            tracing::debug!(root = %root.display(), "cannot see the free space of the engine's data root");
            return Ok(());
        }
    };
    if space.available >= needed {
        return Ok(());
    }
    Err(format!(
        "not enough disk space for docker load in Docker's data root {disk}: {free} free, loading \
         needs about {need} there; free space there (docker image prune, docker system prune) or \
         move the engine's data-root to a larger disk, then push again",
        disk = space.describe(&root),
        free = human(space.available),
        need = human(needed),
    ))
}
