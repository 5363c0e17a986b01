//! Stack room for passes over deeply nested queries.
//!
//! An expression may nest up to [`crate::sql::MAX_EXPR_DEPTH`] levels (`x + 1 + 1 + ...` is a
//! chain as deep as it is long), and planning, optimizing and evaluating walk it recursively. The
//! main passes grow their stack as they go (`#[recursive::recursive]`), but not every walk can
//! (derived `Clone`, `Drop` and `PartialEq`, sqlparser's spans), so the engine's entry points run
//! on a stack with [`RED_ZONE`] to spare, switching to a fresh segment of [`SEGMENT`] when the
//! caller's thread has less. Only the pages a walk touches become resident; a fresh segment is an
//! `mmap` of address space.

/// The least stack an entry point runs with.
pub(crate) const RED_ZONE: usize = 64 << 20;

/// The size of a fresh stack segment.
pub const SEGMENT: usize = 256 << 20;

/// Runs `f` with at least [`RED_ZONE`] of stack.
pub(crate) fn deep<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, SEGMENT, f)
}
