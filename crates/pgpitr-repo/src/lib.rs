//! Repository layout.
