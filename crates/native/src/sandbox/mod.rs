//! The Pod sandbox of the native engine: namespaces, overlay root file system, cgroup.
