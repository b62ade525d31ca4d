//! The embedded SQLite event log (to be written).
