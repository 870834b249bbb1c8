//! One run against the host: probe, take the host guard, provision what the
//! selected trials need, run them one by one, restore. Shared by `cargo test`,
//! `cowgup run` and the drop-in binaries so they behave the same.

use std::path::PathBuf;
use std::time::Duration;

use cowgup_fixtures::needs::{provision, Need};
use cowgup_fixtures::pin_balance::PinBalance;
use cowgup_fixtures::Env;
use cowgup_harness::guard::RestoreReport;
use cowgup_harness::probe::Capabilities;
use cowgup_harness::{
    run_trial, signals, HostGuard, KernelLog, RunOptions, Stop, Trial, TrialReport,
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
    pin_balance: PinBalance,
    kernel_log: KernelLog,
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
        let mut guard = None;
        if !opts.provision {
            log.push("provisioning off (--no-provision): host settings left alone".into());
        } else if !caps.is_root() {
            log.push(format!(
                "not root (euid {}): host settings left alone; trials that need them skip",
                caps.euid
            ));
        } else {
            let (mut g, stale) =
                HostGuard::acquire(&opts.state_dir, opts.lock_wait).map_err(|e| {
                    format!(
                        "cannot take the host guard in {}: {e}",
                        opts.state_dir.display()
                    )
                })?;
            // The probe was made before we held the host: if another run held
            // it meanwhile, or a dead run's settings were just put back, the
            // host has changed since. Provision from what it is now.
            if g.waited_for_another_run() || stale.is_some() {
                caps = Capabilities::probe();
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
            // debugfs first: whether gup_test exists decides which trials can run at all.
            if selected.iter().any(|s| s.needs.contains(&Need::GupTest)) {
                log.extend(provision(&[Need::GupTest], &caps, &mut g));
                caps.refresh_gup_test();
            }
            // Then only what trials that can otherwise run will use: no hugetlb
            // pool for trials that will skip for lack of gup_test.
            let needs: Vec<Need> = selected
                .iter()
                .filter(|s| {
                    s.needs
                        .iter()
                        .all(|n| n.provisionable() || n.unmet(&caps).is_none())
                })
                .flat_map(|s| s.needs.iter().copied())
                .collect();
            log.extend(provision(&needs, &caps, &mut g));
            // The phase change: what the trials see is the provisioned host.
            caps = Capabilities::probe();
            guard = Some(g);
        }
        cowgup_fixtures::init_env(Env {
            page_size: caps.page_size,
            pmd_size: caps.pmd_size,
            thorough: opts.thorough,
            pfns_visible: caps.cap_sys_admin,
        });
        Ok(Session {
            caps,
            guard,
            log,
            run_opts: RunOptions {
                timeout: opts.timeout,
            },
            pin_balance: PinBalance::new(),
            kernel_log: KernelLog::new(),
        })
    }

    pub fn trial(&self, s: &Scenario) -> Trial {
        s.trial(&self.caps)
    }

    /// Run one scenario. Its verdict includes the pin-balance check (every
    /// FOLL_PIN it took must be released once its processes are gone, see
    /// pin_balance.rs) and the kernel-log check (no warning, BUG, Oops or
    /// error taint flag while it ran, see harness/src/kmsg.rs); each says
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

    /// Kernel error lines (and error taint flags) logged outside any trial
    /// since the first trial started, up to now; each is returned once.
    /// They fail no trial; a run reports them at its end.
    pub fn kernel_log_between_trials(&mut self) -> Vec<String> {
        self.kernel_log.between_trials()
    }

    /// Put the host back. Idempotent.
    pub fn finish(&mut self) -> Option<RestoreReport> {
        self.guard.take().map(|mut g| g.restore())
    }

    /// Restore and die of the signal that interrupted the run.
    pub fn abort(&mut self, stop: Stop) -> ! {
        let Stop::Interrupted(sig) = stop;
        if let Some(r) = self.finish() {
            for p in r.problems {
                eprintln!("cowgup: could not restore: {p}");
            }
        }
        eprintln!("cowgup: interrupted by {sig}; host settings restored");
        signals::die_of(sig)
    }
}
