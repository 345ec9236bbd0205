//! Readiness is the component's to decide: it sets named conditions, and `/readyz` answers 200
//! only when every condition holds and the server is not shutting down.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    /// condition name -> reason it is not met (None = met)
    conditions: BTreeMap<String, Option<String>>,
    shutting_down: bool,
}

impl Readiness {
    /// A readiness with one unmet condition, `starting`, which the component clears with
    /// [`Readiness::set_ready`] once it can serve.
    pub fn new() -> Self {
        let r = Self::default();
        r.set("starting", Err("component is starting".into()));
        r
    }

    /// Sets a named condition: `Ok(())` when met, `Err(reason)` when not.
    pub fn set(&self, condition: &str, status: Result<(), String>) {
        let mut state = self.inner.write().unwrap_or_else(|e| e.into_inner());
        state.conditions.insert(condition.to_owned(), status.err());
    }

    /// Clears the `starting` condition.
    pub fn set_ready(&self) {
        self.set("starting", Ok(()));
    }

    pub(crate) fn set_shutting_down(&self) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .shutting_down = true;
    }

    /// `Ok(())` when ready, or the reasons it is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let state = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut reasons: Vec<String> = state
            .conditions
            .iter()
            .filter_map(|(name, reason)| reason.as_ref().map(|r| format!("{name}: {r}")))
            .collect();
        if state.shutting_down {
            reasons.push("shutting down".to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_shutdown() {
        let r = Readiness::new();
        assert!(r.check().is_err());
        r.set_ready();
        assert!(r.check().is_ok());
        r.set("raft", Err("no leader".into()));
        assert_eq!(r.check().unwrap_err(), vec!["raft: no leader".to_string()]);
        r.set("raft", Ok(()));
        r.set_shutting_down();
        assert_eq!(r.check().unwrap_err(), vec!["shutting down".to_string()]);
    }
}
