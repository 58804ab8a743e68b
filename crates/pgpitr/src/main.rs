//! pgpitr command-line tool.
fn main() {}
