//! A repository's life after its snapshots are written: the plan a
//! schedule (`crate::keep`) makes of it, and deleting what retention no
//! longer protects (`expiry`).

pub mod expiry;
pub mod plan;

pub use expiry::{expiry_plan, Doomed};
