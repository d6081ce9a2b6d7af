//! Hostile layers: one test per known attack or semantic trap, named after
//! the CVE or bug shape it mirrors. Every test builds its tars by hand with
//! the `tar` crate's `Header` API (so nothing sanitizes them on the way),
//! applies them with `apply_layer` under `bed/dest`, and checks that the
//! rest of `bed/` (a directory `outside/` with a secret) is byte for byte
//! and bit for bit what it was. Then it checks what happened inside.
//!
//! Needs root (owners, device nodes, trusted.* xattrs); without it, each
//! test says so and passes.

mod bed;
mod escapes;
mod kept;
mod whiteouts;
