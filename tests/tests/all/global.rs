//! The free functions over the process-wide default registry (couch_epi's shape). A binary of
//! its own: the default registry is installed once per process.

use crate::common::*;
use epi::{ApplyOpts, DecideOpts, Decision, Error};

#[test]
fn free_functions_call_through_the_installed_default_registry() {
    assert_eq!(
        epi::apply::<i64, i64>("math", "value", &1).unwrap_err(),
        Error::NoDefaultRegistry
    );
    assert!(epi::installed().is_none());

    let registry = three(["ok", "fail", "ok"]);
    epi::install(registry.clone())
        .map_err(|_| "installed twice")
        .unwrap();
    assert!(
        epi::install(registry).is_err(),
        "a second install is refused"
    );

    // apply stops at beta's failure; with ignore_errors every result is there.
    let err = epi::apply::<i64, i64>("math", "value", &1).unwrap_err();
    assert!(err.to_string().contains("beta-p"), "{err}");
    let all =
        epi::apply_with::<i64, i64>("math", "value", &1, ApplyOpts::new().ignore_errors()).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].as_ref().ok(), Some(&2));
    assert_eq!(all[2].as_ref().ok(), Some(&101));
    let decided: Decision<String> =
        epi::decide("math", "decide", &1i64, DecideOpts::new().ignore_errors()).unwrap();
    assert_eq!(decided, Decision::Decided("gamma-p".to_string()));
    // Every provider answers `check` with its configured truth, false by default.
    assert!(!epi::any("math", "check", &1i64, ApplyOpts::new().ignore_errors()).unwrap());
    assert!(!epi::all("math", "check", &1i64, ApplyOpts::new().ignore_errors()).unwrap());
    assert!(matches!(
        epi::apply::<i64, i64>("nothing", "value", &1),
        Err(Error::UnknownService(_))
    ));
    // A handle resolved once calls the same providers.
    let value = epi::function::<i64, i64>("math", "value").unwrap();
    assert_eq!(
        value
            .apply_with(&1, ApplyOpts::new().ignore_errors())
            .unwrap(),
        all
    );
}
