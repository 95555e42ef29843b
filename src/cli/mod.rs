//! The `upkeep` command line: what each subcommand prints, kept in the
//! library so that it is tested on real files without a process between.

pub mod maintenance;
pub mod report;
