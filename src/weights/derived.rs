//! Data a kernel derives from a layer's weights (a re-layout, offsets for one input
//! geometry), computed on first use and kept beside the weights.
//!
//! Why here and not in a process-wide cache keyed by address: the weights are
//! immutable once loaded, so data kept with them never goes stale (the encodings'
//! methods that hand out mutable parts clear it), and it needs neither a content check
//! on every call nor a size cap. The value type belongs to the kernel that builds it
//! (`Any`), so this module knows nothing about any kernel. It is not part of the
//! encoding: equality, `Debug`, serde and `Clone` ignore it.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

/// One derived value (of any kernel-defined type), or none yet. Boxed so that the
/// encodings (and so every `Op`) stay one pointer larger, not a mutex larger.
#[derive(Default)]
pub struct Derived(Box<Mutex<Option<Arc<dyn Any + Send + Sync>>>>);

impl Derived {
    /// The stored value if it is a `T` and `fits` it, else `make()` (stored for the
    /// next call, replacing any other). Two threads racing on a miss both build it;
    /// the last one stays.
    pub fn get_or_make<T: Any + Send + Sync>(
        &self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let stored = self
            .0
            .lock()
            .expect("the derived-data lock is never held across a panic")
            .clone();
        if let Some(v) = stored.and_then(|v| v.downcast::<T>().ok()) {
            if fits(&v) {
                return v;
            }
        }
        let v = Arc::new(make());
        *self
            .0
            .lock()
            .expect("the derived-data lock is never held across a panic") = Some(v.clone());
        v
    }

    /// Drops the stored value (the weights are about to change).
    pub fn clear(&mut self) {
        *self.0.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Clone for Derived {
    /// A copy starts empty: it is rebuilt on first use.
    fn clone(&self) -> Derived {
        Derived::default()
    }
}

impl PartialEq for Derived {
    /// Derived data never makes two encodings differ.
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Derived")
    }
}

#[cfg(test)]
mod tests {
    use super::Derived;

    #[test]
    fn makes_once_per_fitting_key_and_clears() {
        let mut d = Derived::default();
        let calls = std::cell::Cell::new(0);
        let make = |k: u32| {
            calls.set(calls.get() + 1);
            k
        };
        assert_eq!(*d.get_or_make(|v: &u32| *v == 3, || make(3)), 3);
        assert_eq!(*d.get_or_make(|v: &u32| *v == 3, || make(3)), 3);
        assert_eq!(calls.get(), 1, "a fitting stored value is reused");
        assert_eq!(*d.get_or_make(|v: &u32| *v == 4, || make(4)), 4);
        assert_eq!(calls.get(), 2, "a value for another key is rebuilt");
        assert_eq!(
            *d.get_or_make(|v: &String| v == "x", || "x".to_string()),
            "x"
        );
        d.clear();
        assert_eq!(*d.get_or_make(|v: &u32| *v == 4, || make(4)), 4);
        assert_eq!(calls.get(), 3, "clear drops the stored value");
        assert_eq!(d.clone(), d);
    }
}
