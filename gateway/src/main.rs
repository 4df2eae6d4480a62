//! creditgate gateway binary.

fn main() {}
