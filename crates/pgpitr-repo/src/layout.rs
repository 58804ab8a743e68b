//! Object keys, relative to the repository root. The full layout is
//! described in ARCHITECTURE.md; keep the two in step.

/// The binding to one cluster, written once by `pgpitr init`.
pub const BINDING: &str = "pgpitr.json";
