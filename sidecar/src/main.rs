//! creditgate sidecar binary.

fn main() {}
