//! Test names, ours against upstream's: the `# [RUN] <name>` lines that C
//! `cow` and `gup_longterm` print and those our drop-ins print in the same
//! guest, compared byte for byte (issue 19: names equal to C's on every
//! page size). cow.c's `# [RUN] Non-anonymous memory tests in private
//! mappings` is a section header, not a test, and is left out on both sides.

use std::collections::HashMap;

/// cow.c's section header printed as a `[RUN]` line.
pub const SECTION: &str = "Non-anonymous memory tests in private mappings";

/// The test names of a program's output: its `# [RUN] ` lines, the section header left out.
pub fn of_output(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# [RUN] "))
        .filter(|n| *n != SECTION)
        .map(String::from)
        .collect()
}

/// How `ours` differs from `c`: empty when equal. Each name C prints more
/// often than ours is missing in ours (in C's order), each one ours prints
/// more often is extra (in ours'); then, of the names both print, the
/// first place where the order differs and how many places do.
pub fn differences(c: &[String], ours: &[String]) -> Vec<String> {
    if c == ours {
        return Vec::new();
    }
    let mut balance: HashMap<&str, isize> = HashMap::new();
    for n in c {
        *balance.entry(n).or_default() += 1;
    }
    for n in ours {
        *balance.entry(n).or_default() -= 1;
    }
    let mut out = Vec::new();
    // A name's surplus on one side, taken from its last occurrences there.
    let surplus = |list: &[String], sign: isize| -> Vec<bool> {
        let mut left: HashMap<&str, isize> = balance
            .iter()
            .filter(|(_, b)| **b * sign > 0)
            .map(|(n, b)| (*n, b * sign))
            .collect();
        let mut keep: Vec<bool> = vec![true; list.len()];
        for (i, n) in list.iter().enumerate().rev() {
            if let Some(k) = left.get_mut(n.as_str()) {
                if *k > 0 {
                    *k -= 1;
                    keep[i] = false;
                }
            }
        }
        keep
    };
    let (keep_c, keep_ours) = (surplus(c, 1), surplus(ours, -1));
    for (n, _) in c.iter().zip(&keep_c).filter(|(_, k)| !**k) {
        out.push(format!("missing in ours: {n}"));
    }
    for (n, _) in ours.iter().zip(&keep_ours).filter(|(_, k)| !**k) {
        out.push(format!("extra in ours: {n}"));
    }
    let common = |list: &[String], keep: &[bool]| -> Vec<String> {
        list.iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let (cc, oc) = (common(c, &keep_c), common(ours, &keep_ours));
    let places: Vec<usize> = (0..cc.len()).filter(|&i| cc[i] != oc[i]).collect();
    if let Some(&first) = places.first() {
        out.push(format!(
            "order: {} of the {} names both print are elsewhere; the first, #{}: C {}, ours {}",
            places.len(),
            cc.len(),
            first + 1,
            cc[first],
            oc[first]
        ));
    }
    out
}

/// The report's lines for one program: `names: N equal to C's`, or the
/// counts and each difference.
pub fn report(program: &str, c: &[String], ours: &[String]) -> Vec<String> {
    let d = differences(c, ours);
    if d.is_empty() {
        return vec![format!("{program} names: {} equal to C's", c.len())];
    }
    let mut v = vec![format!(
        "{program} names: differ from C's (C {}, ours {}):",
        c.len(),
        ours.len()
    )];
    v.extend(d.into_iter().map(|l| format!("  {l}")));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn run_lines_are_the_names_without_the_section_header() {
        let out = "TAP version 13\n# [INFO] detected PMD size: 32768 KiB\n1..3\n\
                   # [RUN] Basic COW after fork() ... with base page\nok 1 Basic COW\n\
                   # [RUN] Non-anonymous memory tests in private mappings\n\
                   # [RUN] R/O pin ... with shared zeropage\n";
        assert_eq!(
            of_output(out),
            [
                "Basic COW after fork() ... with base page",
                "R/O pin ... with shared zeropage"
            ]
        );
    }

    #[test]
    fn equal_lists_report_the_count() {
        let a = s(&["a", "b"]);
        assert!(differences(&a, &a).is_empty());
        assert_eq!(report("cow", &a, &a), ["cow names: 2 equal to C's"]);
    }

    #[test]
    fn missing_extra_and_order_are_each_told() {
        let c = s(&["a", "b", "c", "d", "d"]);
        let ours = s(&["a", "c", "b", "d", "e"]);
        assert_eq!(
            differences(&c, &ours),
            [
                "missing in ours: d",
                "extra in ours: e",
                "order: 2 of the 4 names both print are elsewhere; the first, #2: C b, ours c"
            ]
        );
        let r = report("gup_longterm", &c, &ours);
        assert_eq!(r[0], "gup_longterm names: differ from C's (C 5, ours 5):");
        assert_eq!(r[1], "  missing in ours: d");
        assert_eq!(differences(&s(&["a"]), &s(&[])), ["missing in ours: a"]);
    }
}
