//! The scenario catalogue, written once and used by `cargo test`, `cowgup`
//! and the drop-in binaries. One module per family (a file, or a directory
//! whose `mod.rs` keeps the cases and their judgement and whose other files
//! the family's own mechanics), each with
//! `pub fn scenarios(&Capabilities) -> Vec<Scenario>`; the registry
//! (`registry.rs`) has one row per family (id, title, help text, whether its
//! trials may share a batch, its builder), and the catalogue is its rows in
//! order. Like cow.c the families are tables crossed with backings:
//!
//! | family          | cases                       | backings                          |
//! |-----------------|-----------------------------|-----------------------------------|
//! | `cow_anon`      | `cow_anon::CASES` (14)      | `fixtures::anon::AnonBacking::all` |
//! | `cow_anon_thp`  | `cow_anon_thp::CASES` (4)   | one PMD THP                       |
//! | `cow_non_anon`  | `cow_non_anon::CASES` (3)   | `fixtures::non_anon::NonAnonBacking::all` |
//! | `pins_under_reclaim` | `pins_under_reclaim::PRESSURES` (7) x `SOURCES` (2) | `fixtures::anon::AnonBacking::all` |
//! | `file_large_folios` | `file_large_folios::Case::ALL` (9) | `file_large_folios::FolioBacking::all` |
//! | `force_write`   | `force_write::Forcer::ALL` (2), then `Racing` | `force_write::Target::all`, then the private file |
//! | `large_folio_pins` | `OneFolio` (2), `Torn`, each `Span` | `Folio`s, `TornBacking`s, the span itself |
//! | `fork_flags`    | `fork_flags::cases()` (35), where each applies | `fork_flags::FlagBacking::all` |
//!
//! A trial's name is derived, never typed: `<case> ... with <backing>`. The
//! crossing is a value (`cross::Cross`): a family declares its cases and
//! backings, and the cross yields its scenarios. Only gup_test writes its
//! scenarios out, as its trials are upstream's command lines.

pub mod beyond_upstream;
pub mod common;
pub mod cow_anon;
pub mod cow_anon_thp;
pub mod cow_non_anon;
pub mod cross;
pub mod expectations;
pub mod file_large_folios;
pub mod force_write;
pub mod fork_flags;
pub mod fsdax_pins;
pub mod gup_longterm;
pub mod gup_test;
pub mod large_folio_pins;
pub mod movable_pins;
pub mod pins_under_reclaim;
pub mod registry;
pub mod remote_access;
pub mod scenario;
pub mod session;

use cowgup_harness::probe::Capabilities;

pub use registry::{catalogue, FamilyRow, FAMILIES};
pub use scenario::{Family, Scenario, Selection};

/// Every cow trial for this kernel, in cow.c's order (its three families).
pub fn cow_catalogue(caps: &Capabilities) -> Vec<Scenario> {
    [Family::COW_ANON, Family::COW_ANON_THP, Family::COW_NON_ANON]
        .into_iter()
        .flat_map(|f| f.scenarios(caps))
        .collect()
}

/// gup_longterm's trials: upstream's backings, and with `extra` a file on a
/// tmpfs and on an ext4 the suite controls, so that both expectations (pin
/// allowed, pin refused) are exercised on every host.
pub fn gup_longterm_catalogue(caps: &Capabilities, extra: bool) -> Vec<Scenario> {
    gup_longterm::catalogue(caps, extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cowgup_harness::probe::HugetlbPool;

    /// The host the reference name lists were taken on: THP 16K..2M, hugetlb 2M + 1G.
    pub(crate) fn reference_host() -> Capabilities {
        let mut caps = Capabilities::probe();
        caps.pmd_size = Some(2 << 20);
        caps.thp_sizes = (14..=21).map(|s| 1usize << s).collect();
        caps.hugetlb = [2 << 20, 1 << 30]
            .map(|size| HugetlbPool {
                size,
                total: 0,
                free: 0,
            })
            .to_vec();
        caps
    }

    #[test]
    fn cow_names_equal_upstreams_list_byte_for_byte() {
        let expected = include_str!("../names-cow.txt");
        let names: Vec<String> = cow_catalogue(&reference_host())
            .into_iter()
            .map(|s| s.name)
            .collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(names.len(), 778);
        for (i, (got, want)) in names.iter().zip(&want).enumerate() {
            assert_eq!(got, want, "name #{}", i + 1);
        }
        assert_eq!(names.len(), want.len());
    }

    #[test]
    fn gup_longterm_names_equal_upstreams_list() {
        let expected = include_str!("../names-gup_longterm.txt");
        let names: Vec<String> = gup_longterm_catalogue(&reference_host(), false)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, expected.lines().collect::<Vec<_>>());
        assert_eq!(gup_longterm_catalogue(&reference_host(), true).len(), 80);
    }

    #[test]
    fn plan_size_follows_cow_c_formula() {
        // plan = A*(2 + H + 6T + 2pmd) + 4*pmd + 3*(3 + H + pmd)
        for (t, h) in [(1usize, 1usize), (8, 2), (3, 0)] {
            let mut caps = reference_host();
            caps.thp_sizes = (22 - t..=21).map(|s| 1usize << s).collect();
            caps.hugetlb.truncate(h);
            let plan = 14 * (2 + h + 6 * t + 2) + 4 + 3 * (3 + h + 1);
            assert_eq!(cow_catalogue(&caps).len(), plan, "T={t} H={h}");
        }
        let mut caps = reference_host();
        caps.pmd_size = None;
        caps.thp_sizes.clear();
        caps.hugetlb.clear();
        assert_eq!(cow_catalogue(&caps).len(), 14 * 2 + 3 * 3);
    }
}
