//! Holds the criterion benches of the hot path (see `benches/`); it exports nothing.
