//! The exit codes of both binaries, `coffer` and `coffer-proxy`.

/// The command failed at run time (the proxy refused, a backup failed, a
/// check found something wrong).
pub const FAILURE: u8 = 1;
/// A usage or configuration error, reported before anything was done
/// (sysexits' `EX_USAGE`).
pub const USAGE: u8 = 64;
/// Interrupted by SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
pub const INTERRUPTED: u8 = 130;
