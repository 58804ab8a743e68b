//! One test binary, one module per capability.
