//! The only caller of `Instant::now()` in the product. State machines take `now: Instant`
//! as a parameter so tests can drive them with a manual clock.

use std::time::Instant;

/// The current monotonic time. Drivers call this once per wake-up and pass it down.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}
