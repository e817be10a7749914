// -- io modules (helper) --
pub mod atomic;
pub mod data;
pub mod fetch;
pub mod metrics;
pub mod npz;
pub mod plot;
pub mod progress;
pub mod tasks;
// -- end io modules --
