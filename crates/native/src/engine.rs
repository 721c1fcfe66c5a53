//! `NativeEngine`: the node runtime's `Engine` over native sandboxes.
