//! Running repetitions: each one in a fresh tokio runtime (so nothing a
//! slow run left behind competes with the next), each phase under the time
//! cap, and a cap overrun ending the repetitions of that row early.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use accord_engine::Durability;

use crate::stats::Figure;

/// Settings every workload sees.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The longest any phase of a run may take.
    pub cap: Duration,
    /// Durability of the Accord replicas whose writes are measured.
    pub durability: Durability,
    /// Their `received_durability` (changes from the relay).
    pub received: Durability,
}

impl Settings {
    /// The same, for a replica that only sets a workload up: no fsyncs.
    pub fn unmeasured(self) -> Settings {
        Settings {
            durability: Durability::Normal,
            received: Durability::Normal,
            ..self
        }
    }
}

/// A phase ran past the cap.
#[derive(Debug)]
pub struct CapExceeded(pub &'static str);

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ran past the time cap", self.0)
    }
}

impl std::error::Error for CapExceeded {}

/// Runs `phase`, failing with [`CapExceeded`] after `cap`.
pub async fn capped<T>(
    cap: Duration,
    what: &'static str,
    phase: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(cap, phase).await {
        Ok(result) => result,
        Err(_) => Err(CapExceeded(what).into()),
    }
}

/// Polls `check` every millisecond until it holds, within `cap`.
pub async fn poll_until(
    cap: Duration,
    what: &'static str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    capped(cap, what, async {
        loop {
            if check() {
                return Ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// How a row's repetitions ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Every repetition's result.
    Done(Vec<T>),
    /// A repetition ran past the cap in the named phase.
    OverCap(u64, &'static str),
    /// A repetition failed (printed).
    Failed,
}

impl<T> Outcome<T> {
    /// The median of `f` over the repetitions, or how they ended.
    pub fn figure(&self, f: impl Fn(&T) -> f64) -> Figure {
        match self {
            Outcome::Done(runs) => Figure::median(runs.iter().map(f).collect()),
            Outcome::OverCap(cap, phase) => Figure::OverCap(*cap, phase),
            Outcome::Failed => Figure::Failed,
        }
    }
}

/// Every failure [`repeat`] printed, as `label: error`, for the run's
/// closing error: CI logs often keep only the end of a long output, and
/// a failure must be readable there.
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The failures printed so far (see [`FAILURES`]).
pub fn failures() -> Vec<String> {
    FAILURES.lock().map(|f| f.clone()).unwrap_or_default()
}

/// Prints and keeps a row's failure; the row reads `failed`.
fn failed<T>(message: String) -> Outcome<T> {
    eprintln!("  {message}");
    if let Ok(mut failures) = FAILURES.lock() {
        failures.push(message);
    }
    Outcome::Failed
}

/// Runs `reps` repetitions of `run`, each in a new multi-threaded runtime.
pub fn repeat<T, F, Fut>(label: &str, reps: usize, settings: Settings, run: F) -> Outcome<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    attempt(label, reps, settings, &run).unwrap_or_else(failed)
}

/// [`repeat`] for a reference system (samod, the JS sync server): a
/// failed attempt is printed and tried once more, whole, before the row
/// reads `failed`. A reference system's rare failure is not this
/// project's to fix, and must not turn CI red; Accord's own rows get no
/// second try.
pub fn repeat_reference<T, F, Fut>(
    label: &str,
    reps: usize,
    settings: Settings,
    run: F,
) -> Outcome<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    attempt(label, reps, settings, &run)
        .or_else(|first| {
            eprintln!("  {first}\n  {label}: a reference system failed; trying it once more");
            attempt(label, reps, settings, &run)
        })
        .unwrap_or_else(failed)
}

/// The repetitions, or the first failure's message.
fn attempt<T, F, Fut>(
    label: &str,
    reps: usize,
    settings: Settings,
    run: &F,
) -> Result<Outcome<T>, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut results = Vec::with_capacity(reps);
    for rep in 1..=reps {
        eprintln!("  {label}: repetition {rep}/{reps}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{label}: cannot start a runtime: {e}"))?;
        let result = runtime.block_on(run());
        runtime.shutdown_timeout(Duration::from_secs(2));
        match result {
            Ok(r) => results.push(r),
            Err(e) => match e.downcast_ref::<CapExceeded>() {
                Some(CapExceeded(phase)) => {
                    eprintln!("  {label}: {e}; further repetitions skipped");
                    return Ok(Outcome::OverCap(settings.cap.as_secs(), phase));
                }
                None => return Err(format!("{label}: FAILED: {e:#}")),
            },
        }
    }
    Ok(Outcome::Done(results))
}
