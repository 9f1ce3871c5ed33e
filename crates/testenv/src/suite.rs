//! How an end-to-end test binary runs its tests: every test gets the one world the binary
//! started (a control plane and what runs on it), is named after its function
//! ([`named_tests!`](crate::named_tests)), and runs either at once with the others or, when it
//! disturbs the world, one at a time after them.

use std::{process::ExitCode, sync::Arc};

use anyhow::Result;
use libtest_mimic::{Arguments, Conclusion, Trial};

/// What the tests of one binary share.
pub trait World: Send + Sync + 'static {
    /// Runs after each test of `one_at_a_time`, whatever it did, so that the next one starts
    /// from the world as it was started (e.g. with a running operator).
    fn restore(&self) -> Result<()> {
        Ok(())
    }
}

/// A test named after its function.
pub type Test<W> = (&'static str, fn(&W) -> Result<()>);

/// The [`Test`]s of functions, each named after its function, so that a test's name cannot
/// drift from what it runs.
#[macro_export]
macro_rules! named_tests {
    ($($test:ident),+ $(,)?) => {
        ::std::vec![$((stringify!($test), $test as _)),+]
    };
}

/// Starts the world, runs the tests of `at_once` in it all at the same time, then those of
/// `one_at_a_time` one after another; a world that does not start fails the binary.
///
/// A test of `at_once` works in a namespace of its own and leaves what others share alone. A
/// test that stops or restarts something shared, or counts what everyone does, belongs to
/// `one_at_a_time`; so does a test that checks what all the others left behind.
pub fn run<W: World>(
    start: impl FnOnce() -> Result<W>,
    at_once: Vec<Test<W>>,
    one_at_a_time: Vec<Test<W>>,
) -> ExitCode {
    run_with_cases(start, |_| Vec::new(), at_once, one_at_a_time)
}

/// Like [`run`], with the trials `cases` makes in the started world (a table of cases rather
/// than functions) run at once with `at_once`.
pub fn run_with_cases<W: World>(
    start: impl FnOnce() -> Result<W>,
    cases: impl FnOnce(&Arc<W>) -> Vec<Trial>,
    at_once: Vec<Test<W>>,
    one_at_a_time: Vec<Test<W>>,
) -> ExitCode {
    let args = Arguments::from_args();
    let world = match start() {
        Ok(world) => Arc::new(world),
        Err(e) => {
            eprintln!("could not start the test environment: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut trials = cases(&world);
    trials.extend(
        at_once
            .into_iter()
            .map(|(name, test)| trial(&world, name, test)),
    );
    let mut failed = false;
    if !trials.is_empty() {
        failed |= run_at_once(args.clone(), trials).has_failed();
    }
    if !one_at_a_time.is_empty() {
        failed |= run_one_at_a_time(args, &world, one_at_a_time).has_failed();
    }
    drop(world);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The test `test`, named `name`, in `world`.
pub fn trial<W: World>(world: &Arc<W>, name: &'static str, test: fn(&W) -> Result<()>) -> Trial {
    trial_then(world, name, test, |_| Ok(()))
}

/// The test `test`, named `name`, in `world`, followed by `then` whatever the test did.
fn trial_then<W: World>(
    world: &Arc<W>,
    name: &'static str,
    test: fn(&W) -> Result<()>,
    then: fn(&W) -> Result<()>,
) -> Trial {
    let world = world.clone();
    Trial::test(name, move || {
        let result = test(&world);
        let after = then(&world);
        result.and(after).map_err(|e| format!("{e:#}").into())
    })
}

/// Runs `trials` all at once: they mostly wait on the operator, so the binary takes about as
/// long as its longest test.
fn run_at_once(mut args: Arguments, trials: Vec<Trial>) -> Conclusion {
    args.test_threads = Some(args.test_threads.unwrap_or(trials.len()));
    libtest_mimic::run(&args, trials)
}

fn run_one_at_a_time<W: World>(
    mut args: Arguments,
    world: &Arc<W>,
    tests: Vec<Test<W>>,
) -> Conclusion {
    args.test_threads = Some(1);
    let trials = tests
        .into_iter()
        .map(|(name, test)| trial_then(world, name, test, W::restore))
        .collect();
    libtest_mimic::run(&args, trials)
}
