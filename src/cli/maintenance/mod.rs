//! `upkeep maintenance`: list, plan, run, runs, show and rollback of the
//! configured tasks.

pub mod report;
