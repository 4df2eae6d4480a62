//! The end-to-end tests of creditgate live in this package's `tests/` directory, one file per
//! area; this library is empty on purpose.
//!
//! Every harness, fixture and client the tests share is in `creditgate-testkit` (with its
//! `e2e` feature), the one test-support crate of the workspace: add new ones there, not here.
