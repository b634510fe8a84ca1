//! vproc: per-container views of /proc and /sys/devices/system/cpu, served over FUSE.
//!
//! The data path of one read: [`fs`] (FUSE request with the reader's pid) -> [`reader`] (pid -> cgroups,
//! cached) -> [`cgroup`] and [`host`] (limits, usage, the host's file) -> [`view`] (pure rendering) ->
//! back to [`fs`]. [`render`] ties these together; [`files`] is the table of what is served.

pub mod attach;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod files;
pub mod fs;
pub mod health;
pub mod host;
pub mod in_root;
pub mod launcher;
pub mod lru;
pub mod metrics;
pub mod mountinfo;
pub mod notify;
pub mod oci;
pub mod pidfd;
pub mod reader;
pub mod reattach;
pub mod render;
pub mod runc_wrapper;
pub mod view;
