//! Who may do what: identities from certificates, trust domains, the
//! policy and the repositories' own policies, TOTP, and the agents'
//! certificates as seen.

pub mod clientcerts;
pub mod governance;
pub mod identity;
pub mod mfa;
pub mod policy;
pub mod switches;
pub mod trust;
