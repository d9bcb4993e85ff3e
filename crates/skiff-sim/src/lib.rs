//! skiff sim: simulated nodes for scale work (being built).
