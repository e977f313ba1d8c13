//! Apply: the revision becomes live state. [`validate`]: a server-side dry-run of the whole
//! revision decides what each object needs (create, configure, nothing, recreate) before anything
//! is written. [`waves`]: the objects that need it are applied with server-side apply (field
//! manager `driftless`, forcing conflicts: git wins), wave by wave and tier by tier, each group
//! concurrently, a wave starting only once every object of the waves before it is Healthy.
//! [`diff`] tells whether a dry-run would change the live object.

pub mod diff;
pub mod validate;
pub mod waves;

use std::collections::HashMap;

use crate::live::drift::Expected;
use crate::live::LiveState;
use crate::manifest::ObjectRef;
use crate::plan::{Plan, Planned};
use crate::report::Heartbeat;

/// How many objects of one group are dry-run or applied at once.
pub const CONCURRENCY: usize = 32;

/// What the dry-run decided for one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Create,
    Configure,
    Unchanged,
    /// Immutable fields changed on an object annotated for recreation.
    Recreate,
}

/// What each object needs, as its dry-run decided (with, for an object it would change, what
/// Driftless would own of it afterwards).
pub type Decisions<'p> = HashMap<&'p ObjectRef, (Decision, Option<Expected>)>;

/// Who hears of the apply's progress: the source's live state, about each apply, so its watches
/// do not mistake Driftless's own writes for drift; the heartbeat, at every step.
#[derive(Clone, Copy, Default)]
pub struct Listeners<'a> {
    pub live: Option<&'a LiveState>,
    pub heartbeat: Option<&'a Heartbeat>,
    /// Cancelled when a newer commit supersedes the revision being applied.
    pub cancel: Option<&'a tokio_util::sync::CancellationToken>,
}

impl Listeners<'_> {
    /// The reconcile made progress.
    pub fn beat(&self) {
        if let Some(h) = self.heartbeat {
            h.beat();
        }
    }
}

/// The planned objects at these indices of the plan.
pub fn pick<'p>(plan: &'p Plan, indices: &[usize]) -> Vec<&'p Planned> {
    indices.iter().filter_map(|&i| plan.objects().get(i)).collect()
}
