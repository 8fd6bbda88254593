//! A repository's life after its snapshots are written: the plan a
//! schedule (`crate::keep`) makes of it, deleting what retention no longer
//! protects (`expiry`), and the pass that does both by itself (`pass`).

pub mod expiry;
pub mod pass;
pub mod plan;

pub use expiry::{delete_doomed, expiry_plan, objects_of, Deleted, Doomed};
