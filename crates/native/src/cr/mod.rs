//! Checkpoint and restore of Linux process trees.
