//! Cross-crate integration tests live in tests/tests/: they combine the
//! library crates the way the CLI does, without the CLI (end-to-end tests
//! of the binary live in bin/ferry/tests/, where Cargo can build it).
