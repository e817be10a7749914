pub mod abi;
pub mod catalog;
pub mod driver;
pub mod episodes;
pub mod math;
pub mod resources;
pub mod state;
pub mod stats;

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
