//! One run against the host: probe, take the host guard, provision what the
//! selected trials need, run them one by one, restore. Shared by `cargo test`,
//! `cowgup run` and the drop-in binaries so they behave the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cowgup_fixtures::needs::{provision, Need};
use cowgup_fixtures::pin_balance::PinBalance;
use cowgup_fixtures::{Env, TrialOptions};
use cowgup_harness::guard::RestoreReport;
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{
    run_batch, run_trial, signals, HostGuard, KernelLog, Knob, RunOptions, Stop, Trial, TrialReport,
};

use crate::Scenario;

#[derive(Clone, Debug)]
pub struct Options {
    /// Change host settings (hugetlb pools, swap, THP knobs, debugfs) for the
    /// run and restore them after. Off: leave the host exactly alone.
    pub provision: bool,
    pub thorough: bool,
    pub timeout: Duration,
    pub state_dir: PathBuf,
    /// How long to wait while another cowgup holds the host (nextest runs
    /// test processes side by side; an interactive run should fail fast).
    pub lock_wait: Duration,
    /// The user's expectation files, added to the built-in rows
    /// (`$COWGUP_EXPECTATIONS` by default).
    pub expectations: Vec<PathBuf>,
    /// How many trials may run side by side (`run_all`; 1: one at a time).
    pub jobs: usize,
    /// Test-only: keep every io_uring fixed buffer's pins after its trial
    /// (fixtures/src/leak.rs), as a kernel that leaks pins would.
    pub simulate_leak: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            provision: true,
            thorough: false,
            timeout: Duration::from_secs(60),
            state_dir: default_state_dir(),
            lock_wait: Duration::ZERO,
            expectations: crate::expectations::files_from_env(),
            jobs: 1,
            simulate_leak: false,
        }
    }
}

/// Where the journal, lock and swap file live: `$COWGUP_STATE_DIR`, or
/// /var/tmp/cowgup (on disk, so a swap file works and the journal survives
/// the run that wrote it).
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("COWGUP_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cowgup"))
}

pub struct Session {
    pub caps: Capabilities,
    guard: Option<HostGuard>,
    /// What the session did to the host, or why it did nothing, for the report header.
    pub log: Vec<String>,
    run_opts: RunOptions,
    /// What every trial's body is handed (`--thorough`).
    trial_opts: TrialOptions,
    pin_balance: PinBalance,
    kernel_log: KernelLog,
    /// Trials run side by side by `run_all`.
    pub jobs: usize,
    /// The holder of the simulated leak's pins, released before restoring.
    leak: Option<cowgup_fixtures::leak::Anchor>,
}

impl Session {
    /// Probe and provision for these scenarios. Errors are one line, for the user.
    pub fn start(opts: &Options, selected: &[&Scenario]) -> Result<Session, String> {
        Self::start_with(opts, Capabilities::probe(), selected)
    }

    /// As `start`, with the probe the caller already made (to build the
    /// catalogue). It stands for the host before provisioning unless the
    /// host changed before we held it (we waited for another run, or put a
    /// dead run's settings back): then it is probed again. After provisioning
    /// it is probed once more (only gup_test's presence is re-read between
    /// mounting debugfs and the rest).
    pub fn start_with(
        opts: &Options,
        caps: Capabilities,
        selected: &[&Scenario],
    ) -> Result<Session, String> {
        // Bad input is one line before anything touches the host; the
        // table is set before any trial forks, so every trial judges by it.
        crate::expectations::install(&opts.expectations)?;
        cowgup_fixtures::damage::validate_env()?;
        signals::install();
        let mut caps = caps;
        let mut log = Vec::new();
        let guard = if !opts.provision {
            log.push("provisioning off (--no-provision): host settings left alone".into());
            None
        } else if !caps.is_root() {
            log.push(format!(
                "not root (euid {}): host settings left alone; trials that need them skip",
                caps.euid
            ));
            None
        } else {
            let mut guard = hold_host(opts, &mut caps, &mut log)?;
            provision_for(selected, opts.jobs, &mut caps, &mut guard, &mut log);
            Some(guard)
        };
        cowgup_fixtures::init_env(Env {
            page_size: caps.page_size,
            pmd_size: caps.pmd_size,
            pfns_visible: caps.cap_sys_admin,
        });
        let leak = simulated_leak(opts, &mut log)?;
        if opts.jobs > 1 {
            log.push(format!(
                "up to {} trials side by side (--jobs): cow and gup_longterm trials in \
                 batches, the other families one at a time",
                opts.jobs
            ));
        }
        Ok(Session {
            caps,
            guard,
            log,
            run_opts: RunOptions {
                timeout: opts.timeout,
            },
            trial_opts: TrialOptions {
                thorough: opts.thorough,
            },
            pin_balance: PinBalance::new(),
            kernel_log: KernelLog::new(),
            jobs: opts.jobs.max(1),
            leak,
        })
    }

    pub fn trial(&self, s: &Scenario) -> Trial {
        s.trial(&self.caps, self.trial_opts)
    }

    /// Run one scenario. Its verdict includes the pin-balance check (every
    /// FOLL_PIN it took must be released once its processes are gone, see
    /// pin_balance.rs) and the kernel-log check (no warning, BUG, Oops or
    /// error taint flag while it ran, see harness/src/kmsg/check.rs); each says
    /// why when it could not tell. The kernel log is judged last, so that
    /// what the kernel logs while pins are released still counts.
    pub fn run(&mut self, s: &Scenario) -> Result<TrialReport, Stop> {
        let trial = self.trial(s);
        run_trial(
            &trial,
            self.guard.as_mut(),
            &self.run_opts,
            &mut [&mut self.pin_balance, &mut self.kernel_log],
        )
    }

    /// Run scenarios, up to `self.jobs` side by side (see `plan_batches`), and
    /// tell `each` about every one in the order given, whatever order they
    /// ran in: `Progress::Started` then `Progress::Finished`. A trial that
    /// runs alone and is next in order is announced before it runs (so a
    /// hang shows where); one of a batch, when its result is handed over.
    /// `each` may stop the run with an error (a reporter's write). With
    /// `jobs` 1 this is `run` in a loop. A terminating signal returns the
    /// stop and how many results were handed over.
    pub fn run_all<E>(
        &mut self,
        scenarios: &[&Scenario],
        mut each: impl FnMut(Progress) -> Result<(), E>,
    ) -> Result<Result<(), E>, (Stop, usize)> {
        let trials: Vec<Trial> = scenarios.iter().map(|s| self.trial(s)).collect();
        let sharing: Vec<Sharing> = scenarios
            .iter()
            .zip(&trials)
            .map(|(s, t)| Sharing::of(s, t))
            .collect();
        let mut ready: Vec<Option<TrialReport>> = (0..trials.len()).map(|_| None).collect();
        let mut next = 0;
        let mut announced = None;
        let pools: BTreeMap<usize, u64> =
            self.caps.hugetlb.iter().map(|p| (p.size, p.free)).collect();
        let size = if self.jobs > 1 {
            self.jobs * BATCH_PER_JOB
        } else {
            1
        };
        for batch in plan_batches(&sharing, size, BATCH_WINDOW, &pools) {
            if batch == [next] {
                if let Err(e) = each(Progress::Started(next)) {
                    return Ok(Err(e));
                }
                announced = Some(next);
            }
            // On a kernel that keeps pins, a batch with a pinning trial in it
            // would only be run again alone: run those alone at once.
            let parts: Vec<Vec<usize>> = if self.pin_balance.keeps_pins() {
                let (pinning, rest): (Vec<usize>, Vec<usize>) =
                    batch.into_iter().partition(|&i| sharing[i].pins);
                let mut parts: Vec<Vec<usize>> = pinning.into_iter().map(|i| vec![i]).collect();
                parts.extend((!rest.is_empty()).then_some(rest));
                parts.sort();
                parts
            } else {
                vec![batch]
            };
            for part in parts {
                let members: Vec<&Trial> = part.iter().map(|&i| &trials[i]).collect();
                let reports = run_batch(
                    &members,
                    self.guard.as_mut(),
                    &self.run_opts,
                    &mut [&mut self.pin_balance, &mut self.kernel_log],
                    self.jobs,
                )
                .map_err(|stop| (stop, next))?;
                for (i, r) in part.into_iter().zip(reports) {
                    ready[i] = Some(r);
                }
            }
            while let Some(r) = ready.get_mut(next).and_then(Option::take) {
                let started = match announced {
                    Some(i) if i == next => Ok(()),
                    _ => each(Progress::Started(next)),
                };
                if let Err(e) = started.and_then(|()| each(Progress::Finished(next, r))) {
                    return Ok(Err(e));
                }
                next += 1;
            }
        }
        Ok(Ok(()))
    }

    /// Kernel error lines (and error taint flags) logged outside any trial
    /// since the first trial started, up to now; each is returned once.
    /// They fail no trial; a run reports them at its end.
    pub fn kernel_log_between_trials(&mut self) -> Vec<String> {
        self.kernel_log.between_trials()
    }

    /// Put the host back. Idempotent. Pins kept by a simulated leak go
    /// first: a hugetlb pool cannot shrink under pinned pages.
    pub fn finish(&mut self) -> Option<RestoreReport> {
        if let Some(a) = self.leak.take() {
            std::env::remove_var(cowgup_fixtures::leak::VAR);
            if !a.release(Duration::from_secs(30)) {
                eprintln!("cowgup: the simulated leak's pins were not all released within 30 s");
            }
        }
        self.guard.take().map(|mut g| g.restore())
    }

    /// Restore and die of the signal that interrupted the run.
    pub fn abort(&mut self, stop: Stop) -> ! {
        let Stop::Interrupted(sig) = stop;
        let state = self.guard.as_ref().map(|g| g.state_dir().to_path_buf());
        match (self.finish(), state) {
            (Some(r), Some(dir)) if !r.is_clean() => {
                for p in &r.problems {
                    eprintln!("cowgup: could not restore: {p}");
                }
                eprintln!(
                    "cowgup: interrupted by {sig}; host settings NOT all restored: the journal in \
                     {} is kept, run `cowgup restore` once the above is resolved",
                    dir.display()
                );
            }
            (Some(r), _) => eprintln!(
                "cowgup: interrupted by {sig}; host settings restored and read back ({} change(s) \
                 undone)",
                r.changed.len()
            ),
            (None, _) => eprintln!("cowgup: interrupted by {sig}; host settings were not changed"),
        }
        signals::die_of(sig)
    }
}

/// Take the host guard (waiting up to `--lock-wait` for another run), and
/// put back what a dead run left. `caps` is probed again if the host may
/// have changed since it was.
fn hold_host(
    opts: &Options,
    caps: &mut Capabilities,
    log: &mut Vec<String>,
) -> Result<HostGuard, String> {
    let (guard, stale) = HostGuard::acquire(&opts.state_dir, opts.lock_wait).map_err(|e| {
        format!(
            "cannot take the host guard in {}: {e}",
            opts.state_dir.display()
        )
    })?;
    // The probe was made before we held the host: if another run held
    // it meanwhile, or a dead run's settings were just put back, the
    // host has changed since. Provision from what it is now.
    if guard.waited_for_another_run() || stale.is_some() {
        *caps = Capabilities::probe();
    }
    if let Some(report) = stale {
        log.push(format!(
            "restored settings left by an earlier run that did not finish: {}",
            if report.changed.is_empty() {
                "nothing needed changing".into()
            } else {
                report.changed.join("; ")
            }
        ));
        for p in report.problems {
            log.push(format!("could not restore: {p}"));
        }
    }
    Ok(guard)
}

/// Provision what the selected trials need, then probe the provisioned host
/// into `caps` (what the trials see).
fn provision_for(
    selected: &[&Scenario],
    jobs: usize,
    caps: &mut Capabilities,
    guard: &mut HostGuard,
    log: &mut Vec<String>,
) {
    // debugfs first: whether gup_test exists decides which trials can run at all.
    if selected.iter().any(|s| s.needs.contains(&Need::GupTest)) {
        log.extend(provision(&[Need::GupTest], caps, guard));
        caps.refresh_gup_test();
    }
    log.extend(provision(
        &runnable_needs(selected, jobs, caps),
        caps,
        guard,
    ));
    *caps = Capabilities::probe();
}

/// The needs of the trials that can otherwise run (no hugetlb pool for
/// trials that will skip for lack of gup_test), hugetlb pools sized for
/// `jobs` trials at once where their family runs side by side.
fn runnable_needs(selected: &[&Scenario], jobs: usize, caps: &Capabilities) -> Vec<Need> {
    selected
        .iter()
        .filter(|s| {
            s.needs
                .iter()
                .all(|n| n.provisionable() || n.unmet(caps).is_none())
        })
        .flat_map(|s| {
            // Reserved as far as the host allows; batches take what was
            // reserved, see `plan_batches`.
            let jobs = if s.family.concurrent() {
                jobs.max(1) as u64
            } else {
                1
            };
            s.needs.iter().map(move |n| match *n {
                Need::HugetlbPages { size, count } => Need::HugetlbPages {
                    size,
                    count: count * jobs,
                },
                n => n,
            })
        })
        .collect()
}

/// `--simulate-leak`: the holder that keeps every io_uring fixed buffer's
/// pins until the run ends.
fn simulated_leak(
    opts: &Options,
    log: &mut Vec<String>,
) -> Result<Option<cowgup_fixtures::leak::Anchor>, String> {
    if !opts.simulate_leak {
        return Ok(None);
    }
    let a = cowgup_fixtures::leak::Anchor::new()
        .map_err(|e| format!("cannot start the simulated leak's holder: {e}"))?;
    // Read by the trials' processes, forked from this one.
    std::env::set_var(cowgup_fixtures::leak::VAR, a.env_value());
    log.push(
        "simulated pin leak (--simulate-leak): every io_uring fixed buffer's pins are kept \
         after its trial, until the run ends"
            .into(),
    );
    Ok(Some(a))
}

/// What `Session::run_all` tells its caller, in run order.
#[derive(Debug)]
pub enum Progress {
    /// The trial at this index is about to run (or, in a batch, has run).
    Started(usize),
    Finished(usize, TrialReport),
}

/// Trials per batch for each of `jobs`: a batch runs `jobs` at a time, the
/// next starting as one ends, so a long trial (a 1 GiB page to zero and
/// copy) runs while the other CPUs go through short ones; the counters and
/// the kernel log are read once per batch.
pub const BATCH_PER_JOB: usize = 16;

/// How far ahead of the oldest unrun trial a batch may reach: bounds how
/// many finished results wait for an earlier one before they are reported.
/// (cow.c's tables put the same backing one case further, 54 trials on a
/// host with 8 THP sizes and 2 hugetlb sizes.)
pub const BATCH_WINDOW: usize = 1024;

/// What decides whether trials may run side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    /// Runs in a batch of its own: skipped (nothing to run), or of a family
    /// whose trials act on system-wide state (see `Family::concurrent`).
    pub alone: bool,
    /// The host settings it needs; a batch holds one set.
    pub knobs: Vec<Knob>,
    /// What at most one trial of a batch may use: gup_test's single
    /// long-term pin slot.
    pub exclusive: Vec<String>,
    /// Huge pages it takes, per hugetlb size: a batch's members together
    /// must fit in the pool's free pages (with `--jobs` the pool is
    /// provisioned for that many trials at once where the host allows).
    pub hugetlb: Vec<(usize, u64)>,
    /// Its backing group: trials of one group cost alike, so they are
    /// batched together first.
    pub group: String,
    /// Takes FOLL_PIN references: run alone on a kernel that keeps pins.
    pub pins: bool,
    /// Needs no host setting and is on hugetlb pages, which no THP setting
    /// reaches: may join a batch that holds other trials' THP settings.
    pub any_thp_setting: bool,
}

impl Sharing {
    pub fn of(s: &Scenario, t: &Trial) -> Sharing {
        Sharing {
            alone: t.skip.is_some() || !s.family.concurrent(),
            knobs: t.knobs.clone(),
            exclusive: s
                .needs
                .iter()
                .filter(|n| **n == Need::GupTest)
                .map(|_| "gup_test".to_string())
                .collect(),
            hugetlb: s
                .needs
                .iter()
                .filter_map(|n| match *n {
                    Need::HugetlbPages { size, count } => Some((size, count)),
                    _ => None,
                })
                .collect(),
            group: s.group.clone(),
            pins: s.pins,
            any_thp_setting: t.knobs.is_empty()
                && s.needs
                    .iter()
                    .any(|n| matches!(n, Need::HugetlbPages { .. })),
        }
    }

    /// Huge-page bytes it takes: how long it is likely to run.
    fn weight(&self) -> usize {
        self.hugetlb
            .iter()
            .map(|&(size, n)| size * n as usize)
            .sum()
    }

    /// `pools`: free huge pages per size.
    fn fits(&self, batch: &[&Sharing], pools: &BTreeMap<usize, u64>) -> bool {
        !self.alone
            && batch.iter().all(|b| {
                !b.alone
                    && (b.knobs == self.knobs || b.any_thp_setting || self.any_thp_setting)
                    && !b.exclusive.iter().any(|r| self.exclusive.contains(r))
            })
            && self.hugetlb.iter().all(|&(size, count)| {
                let taken: u64 = batch
                    .iter()
                    .flat_map(|b| &b.hugetlb)
                    .filter(|&&(s, _)| s == size)
                    .map(|&(_, c)| c)
                    .sum();
                taken + count <= pools.get(&size).copied().unwrap_or(0)
            })
    }
}

/// Split trials (in run order) into batches of at most `size` that may run
/// side by side. Each batch starts with the oldest trial not yet planned and
/// takes compatible ones from the next `window`, same backing group first;
/// `pools` are the free huge pages per size the members share.
/// Batches come in the order of their first trial, so every trial before a
/// batch's first has run when it starts.
pub fn plan_batches(
    items: &[Sharing],
    size: usize,
    window: usize,
    pools: &BTreeMap<usize, u64>,
) -> Vec<Vec<usize>> {
    let size = size.max(1);
    let mut planned = vec![false; items.len()];
    let mut batches = Vec::new();
    for first in 0..items.len() {
        if planned[first] {
            continue;
        }
        planned[first] = true;
        let mut batch = vec![first];
        let end = items.len().min(first + window.max(1));
        // Same group first; then the heaviest (most huge-page bytes), so
        // that a long trial far ahead overlaps with short ones instead of
        // running alone at the end.
        let mut others: Vec<usize> = (first + 1..end).collect();
        others.sort_by_key(|&j| std::cmp::Reverse(items[j].weight()));
        for same_group in [true, false] {
            let candidates: Box<dyn Iterator<Item = usize>> = if same_group {
                Box::new(first + 1..end)
            } else {
                Box::new(others.iter().copied())
            };
            for j in candidates {
                if batch.len() >= size {
                    break;
                }
                let members: Vec<&Sharing> = batch.iter().map(|&i| &items[i]).collect();
                if !planned[j]
                    && (items[j].group == items[first].group) == same_group
                    && items[j].fits(&members, pools)
                {
                    planned[j] = true;
                    batch.push(j);
                }
            }
        }
        // Longest first: the heaviest start at once, short ones fill in.
        batch.sort_by_key(|&j| std::cmp::Reverse(items[j].weight()));
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(group: &str, knob: Option<&str>, exclusive: &[&str]) -> Sharing {
        Sharing {
            alone: false,
            knobs: knob
                .map(|v| vec![Knob::new("/sys/kernel/mm/x", v)])
                .unwrap_or_default(),
            exclusive: exclusive.iter().map(|s| s.to_string()).collect(),
            hugetlb: vec![],
            group: group.into(),
            pins: false,
            any_thp_setting: false,
        }
    }

    fn none() -> BTreeMap<usize, u64> {
        BTreeMap::new()
    }

    #[test]
    fn jobs_one_is_the_serial_order() {
        let items = vec![item("a", None, &[]); 5];
        let b = plan_batches(&items, 1, 256, &none());
        assert_eq!(b, (0..5).map(|i| vec![i]).collect::<Vec<_>>());
    }

    #[test]
    fn batches_keep_knobs_apart_and_prefer_the_same_group() {
        let items = vec![
            item("base", None, &[]),
            item("thp", Some("always"), &[]),
            item("hugetlb", None, &[]),
            item("base", None, &[]),
            item("thp", Some("always"), &[]),
            item("base", None, &[]),
        ];
        let b = plan_batches(&items, 2, 256, &none());
        assert_eq!(b, vec![vec![0, 3], vec![1, 4], vec![2, 5]]);
        // Every trial exactly once, batches in the order of their first trial.
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn hugetlb_trials_join_batches_that_hold_thp_settings() {
        const G: usize = 1 << 30;
        let huge = Sharing {
            hugetlb: vec![(G, 2)],
            any_thp_setting: true,
            ..item("hugetlb 1G", None, &[])
        };
        let items = vec![
            item("thp 16", Some("always"), &[]),
            huge.clone(),
            item("base", None, &[]),
            item("thp 32", Some("never"), &[]),
            huge,
            item("thp 16", Some("always"), &[]),
        ];
        let pools = BTreeMap::from([(G, 2)]);
        // The heaviest first in a batch; a base-page trial (the host's own
        // THP settings) and another THP setting stay out; the pool holds
        // one 1 GiB trial.
        let b = plan_batches(&items, 4, 256, &pools);
        assert_eq!(b, vec![vec![1, 0, 5], vec![4, 2], vec![3]]);
    }

    #[test]
    fn exclusive_resources_alone_and_window() {
        const G: usize = 1 << 30;
        const M2: usize = 2 << 20;
        let huge = |group: &str, exclusive: &[&str], pages: &[(usize, u64)]| Sharing {
            hugetlb: pages.to_vec(),
            ..item(group, None, exclusive)
        };
        let mut items = vec![
            huge("hugetlb 1G", &[], &[(G, 2)]),
            huge("hugetlb 1G", &[], &[(G, 2)]),
            huge("gup", &["gup_test"], &[(M2, 2)]),
            item("gup", None, &["gup_test"]),
            item("base", None, &[]),
        ];
        items.push(Sharing {
            alone: true,
            ..item("base", None, &[])
        });
        items.push(item("base", None, &[]));
        // A pool for one 1 GiB trial at a time.
        let pools = BTreeMap::from([(G, 2), (M2, 2)]);
        let b = plan_batches(&items, 4, 256, &pools);
        assert_eq!(b, vec![vec![0, 2, 4, 6], vec![1, 3], vec![5]]);
        // A pool for two: the 1 GiB trials share a batch; without a pool
        // of that size, a trial needing it still runs (alone: it skips).
        let pools = BTreeMap::from([(G, 4), (M2, 2)]);
        let b = plan_batches(&items, 4, 256, &pools);
        assert_eq!(b, vec![vec![0, 1, 2, 4], vec![3, 6], vec![5]]);
        let b = plan_batches(&items[..2], 2, 256, &none());
        assert_eq!(b, vec![vec![0], vec![1]]);
        // Nothing further ahead than the window joins a batch.
        let far = vec![item("a", None, &[]); 10];
        assert_eq!(plan_batches(&far, 2, 3, &none())[0], vec![0, 1]);
        let spaced: Vec<Sharing> = (0..6)
            .map(|i| {
                item(
                    if i % 3 == 0 { "a" } else { "b" },
                    (i % 3 != 0).then_some("x"),
                    &[],
                )
            })
            .collect();
        assert_eq!(plan_batches(&spaced, 2, 3, &none())[0], vec![0]);
    }
}
