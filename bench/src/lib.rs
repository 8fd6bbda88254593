//! Coffer's benchmark harness (end-to-end throughput and memory against the
//! real binaries, and criterion micro-benchmarks) will live here. Speed is
//! measured here, never asserted in tests.
