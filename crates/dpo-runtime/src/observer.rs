//! Progress reports from the library to whoever shows them (the CLI's progress bars).

/// Receives progress from long-running library calls (training, sampling, the demo).
pub trait Observer {
    /// A phase with `total` units of work begins (`unit`: "pairs", "steps").
    fn phase(&mut self, _name: &str, _total: usize, _unit: &str) {}
    /// `done` units of the current phase are finished; `info` is a short status.
    fn advance(&mut self, _done: usize, _info: &str) {}
    /// A line worth showing (loaded data, cache hits, checkpoints).
    fn message(&mut self, _msg: &str) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}
