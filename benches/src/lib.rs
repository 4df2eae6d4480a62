//! Holds creditgate's benches; it exports nothing.
//!
//! The criterion benches of the hot path are in `benches/`. The end-to-end load bench is
//! `run-load.sh`, which drives the binaries in `src/bin/`: a bare Pingora proxy (the
//! baseline), a cheap upstream and a tool that seeds the bench customer's credits in Redis.
