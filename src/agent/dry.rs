//! `push --dry-run` on the agent: the plan a push of this manifest would
//! get, made by the same code as a real push's ([`plan::plan`], the platform
//! check, the engine's disk room), without marking a distribution live,
//! registering a swarm, fetching, loading or tagging anything.
//!
//! One check of a real push is left out: room in the chunk store. A real
//! push makes that room by evicting finished distributions, which a dry run
//! must not do; a push short of it still fails, and says so, when it runs.

use std::sync::Arc;

use quinn::SendStream;

use super::{plan, room, AgentCtx};
use crate::content::manifest::Manifest;
use crate::engine::Engine;
use crate::swarm::serve::refuse;
use crate::wire::{write_frame, ErrorCode, Message, Plan};

/// Answers a `PlanQuery` (a `ForcePlanQuery` with `force`): the `Plan`, or
/// an `Error` saying why a push would fail on this node.
pub(super) async fn answer_plan_query(ctx: &AgentCtx, mut send: SendStream, manifest: Manifest, force: bool) {
    if let Err(e) = manifest.validate() {
        return refuse(send, ErrorCode::BadManifest, &e.to_string()).await;
    }
    match would_plan(ctx, Arc::new(manifest), force).await {
        Ok(plan) => {
            let _ = write_frame(&mut send, &Message::Plan(plan)).await;
            let _ = send.finish();
        }
        Err(reason) => refuse(send, ErrorCode::Internal, &reason).await,
    }
}

/// What [`super::dist`]'s `prepare` and the room check would decide,
/// reading only: the engine's images and layers, the store's verified
/// chunks (re-verified, as a push does), the engine's free space.
async fn would_plan(ctx: &AgentCtx, manifest: Arc<Manifest>, force: bool) -> Result<Plan, String> {
    let engine = Engine::connect(&ctx.engine).await.map_err(|e| e.to_string())?;
    let held = engine.held().await.map_err(|e| e.to_string())?;
    let plan = plan::plan_on(&engine, held, &manifest, &ctx.store, force).await?;
    room::check_engine_room(&engine, &manifest, &plan).await?;
    Ok(plan.summary)
}
