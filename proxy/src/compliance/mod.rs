//! What an auditor asks for: the deployment's self-assessment and the
//! compliance report (JSON and HTML).

pub mod assess;
pub mod keypolicy;
pub(crate) mod packed;
pub mod report;
pub mod report_html;
