//! `cowgup matrix --html`: the page loads in a real browser. Headless
//! Chromium renders the page made from the report tests' fake cells and
//! dumps its DOM, which must hold the heat map and the failure's row.
//! Skipped (with the reason) when `/usr/bin/chromium` is not installed.
//!
//! The matrix's report modules (and the guest modules they use) are
//! compiled in here as they are in the binary (the crate has no library); their own unit tests come along.

#[allow(dead_code)]
#[path = "../src/guest/arch.rs"]
mod arch;
#[allow(dead_code)]
#[path = "../src/matrix/collect.rs"]
mod collect;
#[allow(dead_code)]
#[path = "../src/guest/disk.rs"]
mod disk;
#[allow(dead_code)]
#[path = "../src/guest/initramfs.rs"]
mod initramfs;
#[allow(dead_code)]
#[path = "../src/guest/qemu.rs"]
mod qemu;
#[allow(dead_code)]
#[path = "../src/matrix/report/mod.rs"]
mod report;
#[allow(dead_code)]
#[path = "../src/stop.rs"]
mod stop;
#[allow(dead_code)]
#[path = "../src/guest/topology.rs"]
mod topology;
#[allow(dead_code)]
#[path = "../src/matrix/watch.rs"]
mod watch;

/// `crate::guest` of the binary: the guest modules these use.
mod guest {
    pub(crate) use super::{initramfs, qemu, topology};
}

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromium --dump-dom` of the page, within a minute.
fn dump_dom(page: &Path, profile: &Path, out: &Path) -> Result<String, String> {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).map_err(|e| e.to_string())?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {CHROMIUM}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("chromium did not finish within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        return Err(format!("chromium ended with {status}"));
    }
    std::fs::read_to_string(out).map_err(|e| e.to_string())
}

#[test]
fn the_html_page_loads_in_chromium() {
    if !Path::new(CHROMIUM).is_file() {
        eprintln!("SKIP html in chromium: chromium not installed");
        return;
    }
    let mut cells = report::tests::cells();
    cells[0].trials.push(report::tests::trial(
        "pin <after> fork & \"unmap\"",
        "gup_test",
        "fail",
        Some("page 7 went stale"),
    ));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("matrix.html");
    std::fs::write(&page, report::html::html(&cells)).unwrap();
    let dom = dump_dom(
        &page,
        &dir.path().join("profile"),
        &dir.path().join("dom.html"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dom.contains("<table id=\"matrix\">"),
        "no heat map in:\n{dom}"
    );
    assert!(
        dom.contains("<td class=\"bad\">0 / 2 / 0 / 2</td>"),
        "{dom}"
    );
    assert!(
        dom.contains(
            "<tr class=\"unexpected\"><td>pin &lt;after&gt; fork &amp; \"unmap\"</td>\
             <td class=\"outcome\">fail</td><td>page 7 went stale</td></tr>"
        ),
        "no failure row in:\n{dom}"
    );
    assert!(dom.contains("<section id=\"cell-1\">"), "{dom}");
    assert!(dom.contains("looping</pre>"), "{dom}");
}
