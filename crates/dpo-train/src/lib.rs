//! The training layer of dpo-rs: from packed batches to updated weights, and the one loop that
//! repeats it.
//!
//! The data path, one module per arrow: packed batch ([`dpo_data::batch`]) → model forward
//! ([`dpo_model`]) → completion log-probs ([`logps`]) → loss and metrics ([`task`], [`loss`],
//! [`metrics`]) → backward over micro-batches and ranks ([`step`]) → clipping and AdamW
//! ([`optim`]) → the loop, its metrics file and checkpoints ([`trainer`], complete and resumable:
//! [`checkpoint`]). Beside it: reference log-probs computed once and cached ([`reference`](mod@reference)),
//! evaluation on preference data ([`evaluate`]), TensorBoard event files ([`tensorboard`]).

pub mod checkpoint;
pub mod evaluate;
pub mod logps;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod reference;
pub mod step;
pub mod task;
pub mod tensorboard;
pub mod trainer;
