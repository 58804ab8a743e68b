//! WAL record scanner.
