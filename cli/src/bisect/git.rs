//! The git side of a bisection: the tree's state before it (refused when it
//! has uncommitted changes or a bisection of its own), checkouts, `git
//! bisect` and what it answers, and putting the tree back.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Repo {
    pub dir: PathBuf,
}

/// What `git bisect start/good/bad/skip` said next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// A commit is checked out to test; about `left` revisions and `steps`
    /// steps after it.
    Test { left: u64, steps: u64 },
    /// The answer.
    FirstBad(String),
    /// Only skipped commits are left: the first bad one is among these.
    OnlySkipped(Vec<String>),
}

/// Parses what `git bisect` prints after each mark.
pub fn parse_next(out: &str) -> Option<Next> {
    for l in out.lines() {
        if let Some(hash) = l.strip_suffix(" is the first bad commit") {
            return Some(Next::FirstBad(hash.trim().to_string()));
        }
        if l.starts_with("There are only 'skip'ped commits left to test.") {
            let hashes = out
                .lines()
                .map(str::trim)
                .filter(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
                .map(str::to_string)
                .collect();
            return Some(Next::OnlySkipped(hashes));
        }
        if let Some(rest) = l.strip_prefix("Bisecting: ") {
            // "N revision(s) left to test after this (roughly M step(s))"
            let nums: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [left, steps, ..] = nums[..] {
                return Some(Next::Test { left, steps });
            }
        }
    }
    None
}

impl Repo {
    pub fn git(&self, args: &[&str]) -> Result<String, String> {
        // What bisect says is parsed: in English.
        let out = Command::new("git")
            .env("LC_ALL", "C")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "git {} failed: {}{}",
                args.join(" "),
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text + &String::from_utf8_lossy(&out.stderr))
    }

    /// A git work tree that is clean and not being bisected already.
    pub fn open(dir: &Path) -> Result<Repo, String> {
        let r = Repo { dir: dir.into() };
        r.git(&["rev-parse", "--is-inside-work-tree"])
            .map_err(|_| format!("{}: not a git work tree", dir.display()))?;
        let changes = r.git(&["status", "--porcelain", "--untracked-files=no"])?;
        if !changes.trim().is_empty() {
            return Err(format!(
                "{}: has uncommitted changes (bisect checks out other commits): commit or stash them first\n{}",
                dir.display(),
                changes.trim_end()
            ));
        }
        let start = r.git(&["rev-parse", "--git-path", "BISECT_START"])?;
        let start = r.dir.join(start.trim());
        if start.exists() {
            return Err(format!(
                "{}: a git bisect is already under way there (git bisect log; git bisect reset)",
                dir.display()
            ));
        }
        Ok(r)
    }

    /// The full hash of a revision.
    pub fn commit(&self, rev: &str) -> Result<String, String> {
        self.git(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ])
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("{}: no commit {rev:?}", self.dir.display()))
    }

    /// The branch checked out, else the commit (detached).
    pub fn position(&self) -> Result<String, String> {
        match self.git(&["symbolic-ref", "--quiet", "--short", "HEAD"]) {
            Ok(b) => Ok(b.trim().to_string()),
            Err(_) => self.commit("HEAD"),
        }
    }

    pub fn subject(&self, rev: &str) -> String {
        self.git(&["log", "-1", "--format=%s", rev])
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    pub fn short(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--short=12", rev])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| rev.chars().take(12).collect())
    }

    /// `good` is an ancestor of `bad`, as bisect needs.
    pub fn is_ancestor(&self, good: &str, bad: &str) -> bool {
        self.git(&["merge-base", "--is-ancestor", good, bad])
            .is_ok()
    }

    /// How many commits `git bisect` would choose among.
    pub fn count(&self, good: &str, bad: &str) -> u64 {
        self.git(&["rev-list", "--count", &format!("{good}..{bad}")])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn checkout(&self, rev: &str) -> Result<(), String> {
        self.git(&["checkout", "--quiet", rev]).map(|_| ())
    }

    pub fn start(&self, bad: &str, good: &str) -> Result<Next, String> {
        let out = self.git(&["bisect", "start", bad, good])?;
        parse_next(&out).ok_or_else(|| format!("git bisect start said: {}", out.trim()))
    }

    /// Marks `rev` `good`, `bad` or `skip`.
    pub fn mark(&self, how: &str, rev: &str) -> Result<Next, String> {
        let out = self.git(&["bisect", how, rev])?;
        parse_next(&out).ok_or_else(|| format!("git bisect {how} said: {}", out.trim()))
    }
}

/// Puts the tree back where it was, however the bisection ends: `git
/// bisect reset` once one was started, else a checkout of the branch (or
/// commit) it was on.
pub struct Restore<'a> {
    pub repo: &'a Repo,
    pub was: String,
    pub bisecting: bool,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let done = if self.bisecting {
            self.repo.git(&["bisect", "reset"]).map(|_| ())
        } else {
            self.repo.checkout(&self.was)
        };
        match done {
            Ok(()) => eprintln!(
                "cowgup: bisect: {} is back on {}",
                self.repo.dir.display(),
                self.was
            ),
            Err(e) => eprintln!(
                "cowgup: bisect: could not put {} back on {}: {e}",
                self.repo.dir.display(),
                self.was
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_git_bisect_says_next() {
        let out = "Bisecting: 7 revisions left to test after this (roughly 3 steps)\n\
                   [0123abcd] mm: harmless\n";
        assert_eq!(parse_next(out), Some(Next::Test { left: 7, steps: 3 }));
        let out = "Bisecting: 0 revisions left to test after this (roughly 0 steps)\n[x] y\n";
        assert_eq!(parse_next(out), Some(Next::Test { left: 0, steps: 0 }));
        let h = "0123456789abcdef0123456789abcdef01234567";
        let out = format!("{h} is the first bad commit\ncommit {h}\nAuthor: a\n\n    mm: bug\n");
        assert_eq!(parse_next(&out), Some(Next::FirstBad(h.into())));
        let h2 = "1123456789abcdef0123456789abcdef01234567";
        let out = format!(
            "There are only 'skip'ped commits left to test.\n\
             The first bad commit could be any of:\n{h}\n{h2}\n\
             We cannot bisect more!\n"
        );
        assert_eq!(
            parse_next(&out),
            Some(Next::OnlySkipped(vec![h.into(), h2.into()]))
        );
        assert_eq!(parse_next("fatal: nonsense"), None);
    }

    fn repo_with(commits: usize) -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "--quiet", "--initial-branch=work"]);
        for i in 0..commits {
            std::fs::write(dir.path().join("f"), format!("{i}\n")).unwrap();
            git(&["add", "f"]);
            git(&["commit", "--quiet", "-m", &format!("change {i}")]);
        }
        let r = Repo {
            dir: dir.path().into(),
        };
        (dir, r)
    }

    #[test]
    fn a_tree_with_changes_or_a_bisection_is_refused_and_put_back_after() {
        let (dir, r) = repo_with(8);
        assert!(Repo::open(dir.path()).is_ok());
        assert_eq!(r.position().unwrap(), "work");
        assert_eq!(r.count("HEAD~7", "HEAD"), 7);
        assert!(r.is_ancestor("HEAD~7", "HEAD") && !r.is_ancestor("HEAD", "HEAD~7"));
        assert!(r.commit("nonsense").unwrap_err().contains("no commit"));
        let (bad, good) = (r.commit("HEAD").unwrap(), r.commit("HEAD~7").unwrap());
        {
            let mut back = Restore {
                repo: &r,
                was: r.position().unwrap(),
                bisecting: false,
            };
            // Both ends are looked at first; bisect starts from the branch.
            r.checkout(&good).unwrap();
            r.checkout(&back.was).unwrap();
            assert!(matches!(r.start(&bad, &good).unwrap(), Next::Test { .. }));
            back.bisecting = true;
            let e = Repo::open(dir.path()).err().unwrap();
            assert!(e.contains("already under way"), "{e}");
            // A commit marked bad narrows it; the answer names a commit.
            let mid = r.commit("HEAD").unwrap();
            let mut next = r.mark("bad", &mid).unwrap();
            while let Next::Test { .. } = next {
                let h = r.commit("HEAD").unwrap();
                next = r.mark("good", &h).unwrap();
            }
            assert!(matches!(next, Next::FirstBad(_)), "{next:?}");
        }
        assert_eq!(r.position().unwrap(), "work", "back on its branch");
        assert!(Repo::open(dir.path()).is_ok(), "no bisection left");
        std::fs::write(dir.path().join("f"), "changed\n").unwrap();
        let e = Repo::open(dir.path()).err().unwrap();
        assert!(e.contains("uncommitted changes"), "{e}");
    }
}
